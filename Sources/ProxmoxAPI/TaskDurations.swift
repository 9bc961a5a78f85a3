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
    /// After a task outlasted the first wait, the next first wait is the time it
    /// was last seen running plus this margin: tasks of one length are then mostly read once.
    static let margin = 1.05
    /// Each task seen done at its first read brings the first wait down by this
    /// factor, so a type that got quicker is waited on less, and one of a steady
    /// length is read twice only every few tasks (when the wait dips under it).
    static let decay = 0.97
    private let expected = Mutex<[String: Double]>([:])
    /// Types not known yet that one wait is reading the status of: the other
    /// waits for tasks of that type hold off until it learns how long they take.
    private let scouted = Mutex<Set<String>>([])

    public init() {}

    /// How long to wait before the first status read of a task of `type` (0: at once, the type is new).
    package func firstWait(_ type: String) -> Double {
        guard let seconds = expected.withLock({ $0[type] }) else { return 0 }
        return min(seconds, Self.longestFirstWait)
    }

    /// The reads after the first: a tenth of the expected time apart (0.05 s for a new type), then backing off.
    package func interval(_ type: String) -> Double {
        guard let seconds = expected.withLock({ $0[type] }) else { return 0.05 }
        return min(max(seconds / 10, 0.05), 0.5)
    }

    /// Whether the caller is to learn `type`: true for the first wait on a
    /// type not known yet, which then reads its task on the quick schedule
    /// and must call `endScouting`. The others hold off (`isBeingScouted`):
    /// ten tasks of a new type started together are then not each read
    /// six or seven times while none of them is known.
    package func startScouting(_ type: String) -> Bool {
        guard expected.withLock({ $0[type] }) == nil else { return false }
        return scouted.withLock { $0.insert(type).inserted }
    }

    package func endScouting(_ type: String) {
        _ = scouted.withLock { $0.remove(type) }
    }

    package func isBeingScouted(_ type: String) -> Bool { scouted.withLock { $0.contains(type) } }

    /// A task of `type` was seen stopped `elapsed` seconds after it started, and
    /// last seen running at `lastRunning` (nil: stopped at the first read, so it
    /// may have ended long before).
    ///
    /// A task seen running took longer than `lastRunning`, and that (not
    /// `elapsed`, which carries the lateness of a coarse read) moves the first
    /// wait up: tasks read together on the quick schedule of a new type, each
    /// seen done up to a second late, once pushed a 3 s type's wait to the 5 s cap.
    ///
    /// `basis`: the expected time the task's first wait came from. Tasks that
    /// waited on one expectation together bring it down once, not each by
    /// its own step: ten concurrent copies seen done at their first read
    /// took a quarter off, and the next ten were each read three times.
    package func record(_ type: String, elapsed: Double, lastRunning: Double?, basis: Double? = nil) {
        expected.withLock { known in
            switch (known[type], lastRunning) {
            case (nil, nil): known[type] = elapsed
            case let (nil, running?): known[type] = (running + elapsed) / 2  // the first one: the middle of what is known
            case let (old?, nil): if basis.map({ abs($0 - old) < 1e-9 }) ?? true {
                // From the cap: a wait never took longer, so neither did the task.
                known[type] = min(old, Self.longestFirstWait) * Self.decay
            }
            case let (old?, running?): known[type] = max(old, running * Self.margin)
            }
        }
    }

    /// What a task of `type` is expected to take, nil before one was seen.
    public func expectedSeconds(_ type: String) -> Double? { expected.withLock { $0[type] } }
}
