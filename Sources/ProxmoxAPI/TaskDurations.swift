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
    /// Per type: the expected duration, and how many tasks in a row were seen done at their first read.
    private let expected = Mutex<[String: (seconds: Double, doneAtFirstRead: Int)]>([:])

    public init() {}

    /// How long to wait before the first status read of a task of `type` (0: at once, the type is new).
    /// About when the last ones ended: most tasks are then seen done at the first read.
    package func firstWait(_ type: String) -> Double {
        guard let known = expected.withLock({ $0[type] }) else { return 0 }
        return min(known.seconds, Self.longestFirstWait)
    }

    /// The reads after the first: a twentieth of the expected time apart (0.05 s for a new type), then backing off.
    package func interval(_ type: String) -> Double {
        guard let known = expected.withLock({ $0[type] }) else { return 0.05 }
        return min(max(known.seconds / 20, 0.05), 0.5)
    }

    /// A task of `type` was seen stopped `elapsed` seconds after it started.
    /// Seen running first, it took about `elapsed`: the estimate moves halfway
    /// there (one slow task does not set the next ones' waits). Stopped at the
    /// first read, it may have ended long before: the estimate comes down by 3 %,
    /// twice that for each such task in a row, so a type that got quicker is soon
    /// waited on less while one that stays the same is read about once.
    package func record(_ type: String, elapsed: Double, atFirstRead: Bool) {
        expected.withLock { known in
            guard let last = known[type] else { known[type] = (elapsed, 0); return }
            if atFirstRead {
                let inARow = last.doneAtFirstRead + 1
                let cut = min(0.5, 0.03 * Double(1 << min(inARow - 1, 5)))
                known[type] = (last.seconds * (1 - cut), inARow)
            } else {
                known[type] = ((last.seconds + elapsed) / 2, 0)
            }
        }
    }

    /// What a task of `type` is expected to take, nil before one was seen.
    public func expectedSeconds(_ type: String) -> Double? { expected.withLock { $0[type]?.seconds } }
}
