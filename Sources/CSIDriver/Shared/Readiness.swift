import Synchronization
import UnaryGRPC

/// Something this process depends on, asked by Probe whether it is usable now.
public protocol ReadinessCheck: Sendable {
    /// Names the dependency in logs, e.g. "proxmox-api".
    var name: String { get }
    /// Nil when ready; otherwise why not, in words an operator can act on.
    /// Must answer from memory at once: Probe runs it on the connection's event loop.
    func unreadyReason() -> String?
}

/// The answer Probe gives: ready only when every check is.
public struct Readiness: Sendable {
    public let checks: [any ReadinessCheck]

    public init(_ checks: [any ReadinessCheck]) {
        self.checks = checks
    }

    /// The reasons of the checks that are not ready (empty when ready).
    public func unreadyReasons() -> [String] {
        var reasons: [String] = []
        for check in checks {
            if let reason = check.unreadyReason() { reasons.append("\(check.name): \(reason)") }
        }
        return reasons
    }
}

/// Ready while a dependency has answered within `maxAge`: the controller's
/// view of the Proxmox API, which its client reports after every success.
public final class RecentSuccess: ReadinessCheck {
    public let name: String
    private let maxAgeNanoseconds: UInt64
    private let now: @Sendable () -> UInt64
    private let lastSuccess = Atomic<UInt64>(0)

    /// `now` returns monotonic nanoseconds; tests pass their own clock.
    public init(name: String, maxAgeSeconds: Double, now: @escaping @Sendable () -> UInt64 = { MonotonicInstant.now().nanoseconds }) {
        self.name = name
        maxAgeNanoseconds = UInt64(maxAgeSeconds * 1_000_000_000)
        self.now = now
    }

    public func recordSuccess() {
        lastSuccess.store(now(), ordering: .relaxed)
    }

    public func unreadyReason() -> String? {
        let last = lastSuccess.load(ordering: .relaxed)
        if last == 0 { return "has not answered yet" }
        let age = now() &- last
        guard age > maxAgeNanoseconds else { return nil }
        return "has not answered for \(age / 1_000_000_000) s (limit \(maxAgeNanoseconds / 1_000_000_000) s)"
    }
}
