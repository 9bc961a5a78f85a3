/// What went wrong talking to Proxmox, classified once so callers can act:
/// retry, report a missing privilege, treat "not found" as done.
public enum ProxmoxError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 401: wrong token or password, expired ticket.
    case authenticationFailed(reason: String)
    /// 403, naming the ACL path and privilege Proxmox wanted.
    case permissionDenied(path: String?, privilege: String?, message: String)
    /// 400 Parameter verification failed, with Proxmox's message per field.
    case invalidParameters([String: String])
    case badRequest(String)
    /// The VM, volume, storage or task does not exist.
    case notFound(String)
    /// `VM is locked (backup)` and the like.
    case vmLocked(vmid: Int?, lock: String)
    /// The config changed since it was read (stale digest).
    case digestConflict(String)
    /// Another config change held the VM's lock for too long.
    case configLockTimeout(String)
    /// 595–597: pveproxy could not reach pvedaemon or another node.
    case proxy(status: Int, message: String)
    /// Any other non-2xx answer.
    case server(status: Int, message: String)
    /// No answer at all.
    case transport(TransportError)
    /// The task ran and failed; `exitStatus` is Proxmox's text.
    case taskFailed(upid: String, exitStatus: String)
    /// The task did not finish within the time the caller allowed.
    case taskTimedOut(upid: String)
    /// The answer was not what the API documents.
    case malformedResponse(String)

    public var description: String {
        switch self {
        case let .authenticationFailed(reason):
            "Proxmox refused the credentials (401 \(reason)): check the token id and secret, or the user and password"
        case let .permissionDenied(path, privilege, message):
            if let path, let privilege {
                "permission denied: the API token or user lacks \(privilege) on \(path) (\(message))"
            } else {
                "permission denied: \(message)"
            }
        case let .invalidParameters(errors):
            "Proxmox rejected the parameters: " + errors.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "; ")
        case let .badRequest(message): "Proxmox rejected the request: \(message)"
        case let .notFound(message): "not found: \(message)"
        case let .vmLocked(vmid, lock): "VM \(vmid.map(String.init) ?? "?") is locked (\(lock))"
        case let .digestConflict(message): "the VM config changed concurrently: \(message)"
        case let .configLockTimeout(message): "the VM config is busy: \(message)"
        case let .proxy(status, message): "Proxmox proxy error \(status): \(message)"
        case let .server(status, message): "Proxmox error \(status): \(message)"
        case let .transport(error): "cannot reach Proxmox: \(error)"
        case let .taskFailed(upid, exitStatus): "Proxmox task failed: \(exitStatus) (\(upid))"
        case let .taskTimedOut(upid): "Proxmox task did not finish in time (\(upid))"
        case let .malformedResponse(detail): "unexpected answer from Proxmox: \(detail)"
        }
    }

    /// Whether the same request may simply be sent again.
    var isTransient: Bool {
        switch self {
        case .proxy, .configLockTimeout, .vmLocked: true
        case let .transport(error):
            switch error {
            case .cannotConnect, .timedOut, .connectionLost: true
            default: false
            }
        case let .server(status, _): status == 502 || status == 503 || status == 504
        default: false
        }
    }

    /// Whether the request certainly had no effect, so even a non-idempotent
    /// call (an allocation) may be sent again.
    var provesNothingHappened: Bool {
        switch self {
        case let .proxy(status, _): status == 595  // pvedaemon never got it
        case .configLockTimeout, .vmLocked: true
        case let .transport(error):
            if case .cannotConnect = error { true } else { false }
        default: false
        }
    }
}
