#if canImport(Glibc)
import Glibc
#endif
import CLinux
import Logging
import Synchronization

/// One thread serving many connections with epoll: it reads what arrives,
/// starts calls, delivers finished handlers' results and writes responses.
///
/// The server runs a few of these (one per core, at most four) instead of a
/// thread per connection: a hundred idle kubelet and sidecar connections then
/// cost a hundred sockets, not a hundred stacks and malloc arenas, and the
/// threads that do the work are as many as the cores that can run them.
final class EventLoop: @unchecked Sendable {
    private struct Inbox {
        var added: [Connection] = []
        var notified: Set<Int> = []
        var wakePending = false
        var stopping = false
        /// Work of handler tasks that prefer this loop (`TaskExecutor`).
        var jobs: [UnownedJob] = []
        /// The thread has ended: work still coming goes to Swift's pool.
        var ended = false
    }

    private static let wakeToken = UInt64.max

    private let epoll: Int32
    private let wake: WakeSignal
    private let inbox = Mutex(Inbox())
    private let logger: Logger
    /// The loop's thread, once it runs: what it signals itself while taking its inbox needs no wake-up.
    private let loopThread = Atomic<UInt>(0)
    /// Owned by the loop's thread: from its events to the end of `takeInbox`, which
    /// takes whatever the thread signals meanwhile (calls it starts, handlers it runs).
    private var inboxTakenLater = false
    private let onClosed: @Sendable (Int) -> Void
    private var thread: pthread_t?

    // Owned by the loop's thread.
    private var connections: [Int: Connection] = [:]
    /// Calls were served since memory was last handed back (see `idleTrim`).
    private var busySinceTrim = false

    /// How long a loop waits idle before handing freed memory back to the system:
    /// a burst of calls leaves malloc holding its peak (output buffers, sessions of
    /// connections since closed), which a node plugin would otherwise keep for good.
    static let idleTrimMilliseconds: Int32 = 2_000

    init(named name: String, logger: Logger, onClosed: @escaping @Sendable (Int) -> Void) throws(SystemCallError) {
        self.logger = logger
        self.onClosed = onClosed
        epoll = try retryingOnInterrupt("epoll_create1") { CLinux_epoll_create() }
        wake = try WakeSignal()
        guard CLinux_epoll_add(epoll, wake.fd, Self.wakeToken, 0) == 0 else {
            let error = SystemCallError(call: "epoll_ctl", errno: errno)
            Glibc.close(epoll)
            throw error
        }
        thread = try spawnThread(named: name) { [self] in run() }
    }

    deinit { Glibc.close(epoll) }

    /// From any thread: serve `connection` on this loop.
    func add(_ connection: Connection) {
        signal { $0.added.append(connection) }
    }

    /// From any thread: `id` has results or a shutdown request waiting.
    func notify(_ id: Int) {
        signal { $0.notified.insert(id) }
    }

    /// Closes every connection still open and ends the thread.
    func stop() {
        signal { $0.stopping = true }
        if let thread { pthread_join(thread, nil) }
    }

    /// What the loop's thread signals from its events to the end of `takeInbox` (a call
    /// started on the loop, a handler there finishing) is taken in `takeInbox`: no eventfd
    /// write. Later (a cancellation in `settle` resumes a sleeping handler) it wakes itself.
    private func signal(_ change: (inout Inbox) -> Void) {
        let wakeNeeded = inbox.withLock { inbox -> Bool in
            change(&inbox)
            defer { inbox.wakePending = true }
            return !inbox.wakePending
        }
        if wakeNeeded, !(loopThread.load(ordering: .relaxed) == UInt(pthread_self()) && inboxTakenLater) { wake.signal() }
    }

    // MARK: - The loop's thread

    private func run() {
        loopThread.store(UInt(pthread_self()), ordering: .relaxed)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { buffer.deallocate() }
        var tokens = [UInt64](repeating: 0, count: 64)
        var flags = [UInt32](repeating: 0, count: 64)
        var touched: Set<Int> = []

        while true {
            let count = CLinux_epoll_wait(epoll, &tokens, &flags, Int32(tokens.count), waitTimeout())
            if count < 0 {
                if errno == EINTR { continue }
                logger.error("event loop stopped", metadata: ["error": "\(SystemCallError(call: "epoll_wait", errno: errno))"])
                closeAll()
                retire()
                return
            }
            if count == 0, busySinceTrim, connections.values.allSatisfy({ $0.nextDeadline() == nil }) {
                // Idle since the last call: nothing in flight, so return what malloc holds free.
                _ = CLinux_malloc_trim()
                busySinceTrim = false
                continue
            }
            if count > 0 { busySinceTrim = true }
            inboxTakenLater = true
            touched.removeAll(keepingCapacity: true)
            for index in 0..<Int(count) {
                if tokens[index] == Self.wakeToken {
                    wake.drain()
                } else if let connection = connections[Int(tokens[index])] {
                    if flags[index] & 5 != 0 { connection.onReadable(buffer: buffer) }
                    touched.insert(connection.id)
                }
            }
            // New connections, results, and the work of calls started above that run on this loop.
            if takeInbox(into: &touched) {
                closeAll()
                retire()
                return
            }
            let now = MonotonicInstant.now()
            for (id, connection) in connections where connection.hasDeadline(dueBy: now) { touched.insert(id) }
            for id in touched {
                guard let connection = connections[id] else { continue }
                if connection.settle() {
                    watchWritability(connection)
                } else {
                    _ = CLinux_epoll_remove(epoll, connection.fd)
                    connections[id] = nil
                    onClosed(id)
                }
            }
        }
    }

    /// Registers new connections, passes notifications on and runs queued
    /// handler work, until a round brings no work. True when the loop must stop.
    /// After `maxJobRounds` rounds with work the rest waits for the next turn,
    /// so work that keeps coming cannot keep the sockets from being read and written.
    private func takeInbox(into touched: inout Set<Int>) -> Bool {
        defer { inboxTakenLater = false }
        for _ in 0..<Self.maxJobRounds {
            let (jobs, stopping) = takeInboxOnce(into: &touched)
            // Their results and further work come in the next round.
            for job in jobs { job.runSynchronously(on: asUnownedTaskExecutor()) }
            if stopping { return true }
            if jobs.isEmpty { return false }
        }
        // What the last round queued was signalled without a wake-up: wake now.
        let wakeNeeded = inbox.withLock { inbox -> Bool in
            let waiting = !inbox.jobs.isEmpty || !inbox.notified.isEmpty || !inbox.added.isEmpty
            if waiting { inbox.wakePending = true }
            return waiting
        }
        if wakeNeeded { wake.signal() }
        return false
    }

    static let maxJobRounds = 16

    /// The thread ends: handler work queued for it, and any that comes later
    /// (a cancelled handler resuming), runs on Swift's pool instead of never.
    private func retire() {
        loopThread.store(0, ordering: .relaxed)
        let orphans = inbox.withLock { inbox -> [UnownedJob] in
            inbox.ended = true
            defer { inbox.jobs.removeAll() }
            return inbox.jobs
        }
        orphans.forEach { globalConcurrentExecutor.enqueue(ExecutorJob($0)) }
    }

    private func takeInboxOnce(into touched: inout Set<Int>) -> (jobs: [UnownedJob], stopping: Bool) {
        let (added, notified, jobs, stopping) = inbox.withLock { inbox in
            defer {
                inbox.added.removeAll()
                inbox.notified.removeAll()
                inbox.jobs.removeAll(keepingCapacity: true)
                inbox.wakePending = false
            }
            return (inbox.added, inbox.notified, inbox.jobs, inbox.stopping)
        }
        for connection in added {
            if CLinux_epoll_add(epoll, connection.fd, UInt64(connection.id), 0) == 0 {
                connections[connection.id] = connection
                touched.insert(connection.id)  // its SETTINGS frame goes out now
            } else {
                logger.error("cannot watch connection", metadata: ["error": "\(SystemCallError(call: "epoll_ctl", errno: errno))"])
                connection.close()
                onClosed(connection.id)
            }
        }
        for id in notified {
            guard let connection = connections[id] else { continue }
            connection.onNotified()
            touched.insert(id)
        }
        return (jobs, stopping)
    }

    private func watchWritability(_ connection: Connection) {
        let wanted = connection.hasPendingOutput
        guard wanted != connection.watchesWritable else { return }
        if CLinux_epoll_modify(epoll, connection.fd, UInt64(connection.id), wanted ? 1 : 0) == 0 {
            connection.watchesWritable = wanted
        }
    }

    /// Milliseconds until the earliest call deadline of any connection; -1 for none.
    private func waitTimeout() -> Int32 {
        var earliest: MonotonicInstant?
        for connection in connections.values {
            if let deadline = connection.nextDeadline(), earliest.map({ deadline < $0 }) ?? true { earliest = deadline }
        }
        let idle: Int32 = busySinceTrim ? Self.idleTrimMilliseconds : -1
        guard let earliest else { return idle }
        let nanoseconds = MonotonicInstant.now().nanoseconds(until: earliest)
        // Round up so a deadline is never checked a moment too early.
        let untilDeadline = Int32(min((nanoseconds + 999_999) / 1_000_000, 60_000))
        return idle < 0 ? untilDeadline : min(untilDeadline, idle)
    }

    private func closeAll() {
        for (id, connection) in connections {
            _ = CLinux_epoll_remove(epoll, connection.fd)
            connection.close()
            onClosed(id)
        }
        connections.removeAll()
    }
}

/// The `.later` part of a handler registered on the loop (`Router.registerOnLoop`)
/// is a task that prefers it: its work runs on the loop's thread between rounds
/// of events, so a quick await costs no hop to Swift's pool and back.
extension EventLoop: TaskExecutor {
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        var ended = false
        signal { inbox in
            if inbox.ended { ended = true } else { inbox.jobs.append(job) }
        }
        if ended { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
    }
}

