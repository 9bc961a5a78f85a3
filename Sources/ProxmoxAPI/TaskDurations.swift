import Synchronization

/// How long Proxmox tasks of each type (`qmcreate`, `qmclone`, `qmdestroy`)
/// took lately, so a wait reads a task's status about when it is done rather
/// than on a fixed schedule from its start. Proxmox has no call that waits for
/// a task (only config writes and volume deletes take `background_delay` /
/// `delay`), so each status read is a pveproxy → pvedaemon round trip, and a
/// fixed backoff spends five to seven of them on a task of a few seconds.
public final class TaskDurations: Sendable {
    /// The longest first wait: a task much quicker than its type's last ones
    /// (a small clone after a large one) is never waited on much longer than this.
    static let longestFirstWait = 5.0
    private let expected = Mutex<[String: Double]>([:])

    public init() {}

    /// How long to wait before the first status read of a task of `type` (0: at once, the type is new).
    package func firstWait(_ type: String) -> Double {
        guard let seconds = expected.withLock({ $0[type] }) else { return 0 }
        return min(seconds * 0.9, Self.longestFirstWait)
    }

    /// The reads after the first: a tenth of the expected time apart (0.05 s for a new type), then backing off.
    package func interval(_ type: String) -> Double {
        guard let seconds = expected.withLock({ $0[type] }) else { return 0.05 }
        return min(max(seconds / 10, 0.05), 0.5)
    }

    /// A task of `type` was seen stopped `elapsed` seconds after it started.
    /// Stopped at the first read, it may have ended long before: the estimate
    /// comes down, so a type that got quicker is soon waited on less.
    package func record(_ type: String, elapsed: Double, atFirstRead: Bool) {
        let sample = atFirstRead ? elapsed / 2 : elapsed
        expected.withLock { known in
            known[type] = known[type].map { ($0 + sample) / 2 } ?? sample
        }
    }

    /// What a task of `type` is expected to take, nil before one was seen.
    public func expectedSeconds(_ type: String) -> Double? { expected.withLock { $0[type] } }
}
