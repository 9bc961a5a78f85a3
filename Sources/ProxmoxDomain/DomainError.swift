/// What goes wrong in the Proxmox domain, in its own terms: the gRPC layer
/// turns each into a status code in one place (Controller/ControllerErrors.swift).
package enum DomainError: Error, Equatable, CustomStringConvertible {
    /// A cluster, VM or volume that is not there.
    case notFound(String)
    /// The state forbids it until someone changes it (a node id two VMs share).
    case conflict(String)
    /// Another operation is under way on it; a retry soon succeeds.
    case busy(String)
    /// It did not happen this time, for a passing reason; try again.
    case notYet(String)
    /// It exists, but not as asked (a volume attached with the other read-only flag).
    case exists(String)
    /// No room left for it (every disk slot of a bus taken).
    case exhausted(String)
    /// Proxmox's state contradicts what the driver just did or read.
    case inconsistent(String)

    package var description: String {
        switch self {
        case let .notFound(message), let .conflict(message), let .busy(message), let .notYet(message), let .exists(message), let .exhausted(message),
             let .inconsistent(message): message
        }
    }
}
