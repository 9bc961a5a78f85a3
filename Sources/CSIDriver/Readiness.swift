/// Something this process depends on, asked by Probe whether it is usable now.
public protocol ReadinessCheck: Sendable {
    /// Names the dependency in logs, e.g. "proxmox-api".
    var name: String { get }
    /// Nil when ready; otherwise why not, in words an operator can act on.
    func unreadyReason() async -> String?
}

/// The answer Probe gives: ready only when every check is.
public struct Readiness: Sendable {
    public let checks: [any ReadinessCheck]

    public init(_ checks: [any ReadinessCheck]) {
        self.checks = checks
    }

    /// The reasons of the checks that are not ready (empty when ready).
    public func unreadyReasons() async -> [String] {
        var reasons: [String] = []
        for check in checks {
            if let reason = await check.unreadyReason() { reasons.append("\(check.name): \(reason)") }
        }
        return reasons
    }
}
