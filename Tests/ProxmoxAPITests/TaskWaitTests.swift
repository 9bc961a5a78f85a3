import ProxmoxAPI
import Synchronization
import Testing

/// Answers task-status polls from a script: running N times, then a final state.
final class ScriptedTasks: HTTPTransport {
    let runningPolls: Int
    let exitStatus: String
    let polls = Atomic<Int>(0)

    init(runningPolls: Int, exitStatus: String) {
        self.runningPolls = runningPolls
        self.exitStatus = exitStatus
    }

    func send(_ request: HTTPRequest) async throws -> HTTPResponse {
        let poll = polls.add(1, ordering: .relaxed).newValue
        let body = poll <= runningPolls
            ? #"{"data":{"status":"running"}}"#
            : #"{"data":{"status":"stopped","exitstatus":"\#(exitStatus)"}}"#
        return HTTPResponse(status: 200, reason: "OK", body: Array(body.utf8))
    }
}

/// Records the waits instead of waiting, and advances a fake clock by them.
final class RecordingSleeper: Sleeper {
    let waits = Mutex<[Double]>([])
    let clock = Mutex<Double>(0)
    func sleep(seconds: Double) async throws {
        waits.withLock { $0.append(seconds) }
        clock.withLock { $0 += seconds }
    }
}

/// Tasks that run `duration` seconds of the sleeper's clock from their `start`.
final class TimedTasks: HTTPTransport {
    let duration: Double
    let sleeper: RecordingSleeper
    let started = Mutex<[String: Double]>([:])
    let polls = Atomic<Int>(0)

    init(duration: Double, sleeper: RecordingSleeper) {
        (self.duration, self.sleeper) = (duration, sleeper)
    }

    /// Starts the task `taskID(_, n)` names (its pid, unique in the percent-encoded URL).
    func start(_ n: Int) {
        let now = sleeper.clock.withLock { $0 }
        started.withLock { $0["7770\(n)"] = now }
    }

    func send(_ request: HTTPRequest) async throws -> HTTPResponse {
        polls.add(1, ordering: .relaxed)
        let now = sleeper.clock.withLock { $0 }
        let start = started.withLock { known in known.first { request.url.contains($0.key) }?.value } ?? now
        let body = now - start < duration ? #"{"data":{"status":"running"}}"# : #"{"data":{"status":"stopped","exitstatus":"OK"}}"#
        return HTTPResponse(status: 200, reason: "OK", body: Array(body.utf8))
    }
}

/// A clock that moves only when every wait it serves is asleep: it then jumps
/// to the earliest wake-up. Many concurrent waits see one consistent time.
final class VirtualClock: Sleeper {
    private struct Sleeping {
        let wake: Double
        let continuation: CheckedContinuation<Void, Never>
    }
    private let state = Mutex<(now: Double, sleeping: [Sleeping])>((0, []))

    var now: Double { state.withLock { $0.now } }

    func sleep(seconds: Double) async throws {
        await withCheckedContinuation { continuation in
            state.withLock { $0.sleeping.append(Sleeping(wake: $0.now + max(0, seconds), continuation: continuation)) }
        }
    }

    /// Runs until `active()` is 0: whenever that many waits are asleep, wakes the earliest.
    func run(active: @Sendable () -> Int) async {
        while active() > 0 {
            let due: [Sleeping] = state.withLock { state in
                guard !state.sleeping.isEmpty, state.sleeping.count == active() else { return [] }
                let wake = state.sleeping.map(\.wake).min()!
                state.now = max(state.now, wake)
                let due = state.sleeping.filter { $0.wake <= wake }
                state.sleeping.removeAll { $0.wake <= wake }
                return due
            }
            if due.isEmpty { try? await Task.sleep(nanoseconds: 200_000) } else { due.forEach { $0.continuation.resume() } }
        }
    }
}

/// Tasks that each run `duration` seconds of a virtual clock from when they were started.
final class VirtualTasks: HTTPTransport {
    let duration: Double
    let clock: VirtualClock
    let started = Mutex<[String: Double]>([:])
    let reads = Mutex<[String: [Double]]>([:])

    init(duration: Double, clock: VirtualClock) {
        (self.duration, self.clock) = (duration, clock)
    }

    func start(_ n: Int) { started.withLock { $0["7770\(n)"] = clock.now } }

    func send(_ request: HTTPRequest) async throws -> HTTPResponse {
        let now = clock.now
        let (id, start) = started.withLock { known in known.first { request.url.contains($0.key + "%3A") }! }
        reads.withLock { $0[id, default: []].append(now - start) }
        let body = now - start < duration ? #"{"data":{"status":"running"}}"# : #"{"data":{"status":"stopped","exitstatus":"OK"}}"#
        return HTTPResponse(status: 200, reason: "OK", body: Array(body.utf8))
    }
}

/// How many waits are still running, shared with the clock's loop.
final class Running: Sendable {
    private let count: Atomic<Int>
    init(_ count: Int) { self.count = Atomic(count) }
    var value: Int { count.load(ordering: .relaxed) }
    func finished() { count.subtract(1, ordering: .relaxed) }
}

/// Waits for each of `tasks` (type and number) at once, the virtual clock moving whenever all are asleep.
func waitTogether(_ client: ProxmoxClient, _ clock: VirtualClock, _ tasks: [(String, Int)]) async throws {
    let active = Running(tasks.count)
    try await withThrowingTaskGroup(of: Void.self) { group in
        for (type, n) in tasks {
            group.addTask {
                defer { active.finished() }
                try await client.waitForTask(taskID(type, n))
            }
        }
        group.addTask { await clock.run { active.value } }
        try await group.waitForAll()
    }
}

func taskID(_ type: String, _ n: Int) -> String { "UPID:pve1:7770\(n):00005678:6B000000:\(type):100:csi@pve!csi:" }

let upid = "UPID:pve1:00001234:00005678:6B000000:qmconfig:100:csi@pve!csi:"

func taskClient(_ transport: ScriptedTasks, _ sleeper: RecordingSleeper) -> ProxmoxClient {
    ProxmoxClient(endpoint: ClusterEndpoint(url: "https://pve:8006", credentials: .apiToken(id: "a@pve!b", secret: "s")),
                  transport: transport, sleeper: sleeper, now: { sleeper.clock.withLock { $0 } })
}

@Suite struct TaskWaitTests {
    @Test func aNewTypeIsReadQuicklyThenAQuarterOfItsAgeApartUpToTheCap() async throws {
        let sleeper = RecordingSleeper()
        let exit = try await taskClient(ScriptedTasks(runningPolls: 16, exitStatus: "OK"), sleeper).waitForTask(upid, maxPollInterval: 1)
        #expect(exit == "OK")
        let waits = sleeper.waits.withLock { $0 }
        #expect(waits.prefix(5) == [0.05, 0.1, 0.2, 0.25, 0.25])
        var age = 0.0
        for (wait, next) in zip(waits, waits.dropFirst()) {
            age += wait
            #expect(next <= 1, "the cap")
            if age >= 1 { #expect(next >= min(age / 4, 1) - 1e-9, "a quarter of the age \(age): \(next)") }
        }
        #expect(waits.last == 1)
    }

    @Test(arguments: ["OK", "WARNINGS: 3"])
    func successIncludesWarnings(exit: String) async throws {
        #expect(try await taskClient(ScriptedTasks(runningPolls: 1, exitStatus: exit), RecordingSleeper()).waitForTask(upid) == exit)
    }

    @Test func failureCarriesTheExitStatus() async {
        await #expect(throws: ProxmoxError.taskFailed(upid: upid, exitStatus: "VM is locked (backup)")) {
            try await taskClient(ScriptedTasks(runningPolls: 0, exitStatus: "VM is locked (backup)"), RecordingSleeper()).waitForTask(upid)
        }
    }

    @Test func aWorkerThatFoundTheConfigChangedIsADigestConflict() async {
        // update_vm_api's worker checks the digest again under the VM's lock.
        let exit = "checksum mismatch (file change by other user?)"
        await #expect(throws: ProxmoxError.digestConflict(exit)) {
            try await taskClient(ScriptedTasks(runningPolls: 1, exitStatus: exit), RecordingSleeper()).waitForTask(upid)
        }
    }

    @Test func givesUpAtTheDeadline() async {
        let sleeper = RecordingSleeper()
        await #expect(throws: ProxmoxError.taskTimedOut(upid: upid)) {
            try await taskClient(ScriptedTasks(runningPolls: 1_000_000, exitStatus: "OK"), sleeper).waitForTask(upid, timeout: 30)
        }
        #expect(sleeper.clock.withLock { $0 } <= 30)
    }

    @Test func aTaskTypeSeenBeforeIsFirstReadAboutWhenItEnds() async throws {
        let sleeper = RecordingSleeper()
        let tasks = TimedTasks(duration: 3, sleeper: sleeper)
        let client = ProxmoxClient(endpoint: ClusterEndpoint(url: "https://pve:8006", credentials: .apiToken(id: "a@pve!b", secret: "s")),
                                   transport: tasks, sleeper: sleeper, now: { sleeper.clock.withLock { $0 } })
        tasks.start(1)
        try await client.waitForTask(taskID("qmcreate", 1))
        let firstReads = tasks.polls.load(ordering: .relaxed)
        #expect(firstReads >= 6, "a new type is read on the quick schedule")
        for n in 2...4 {
            let before = (tasks.polls.load(ordering: .relaxed), sleeper.clock.withLock { $0 })
            tasks.start(n)
            try await client.waitForTask(taskID("qmcreate", n))
            let reads = tasks.polls.load(ordering: .relaxed) - before.0
            let waited = sleeper.clock.withLock { $0 } - before.1
            #expect(reads <= 3, "task \(n): \(reads) status reads")
            #expect(waited >= 3 && waited < 3.6, "task \(n) seen done \(waited - 3) s after it ended")
        }
        // Another type still starts on the quick schedule.
        let before = tasks.polls.load(ordering: .relaxed)
        tasks.start(9)
        try await client.waitForTask(taskID("qmdestroy", 9))
        #expect(tasks.polls.load(ordering: .relaxed) - before >= 6)
    }

    @Test func aTypeThatGotQuickerIsWaitedOnLessTaskByTask() async throws {
        let durations = TaskDurations()
        durations.record("qmclone", elapsed: 4, lastRunning: 3.8)
        // Quick ones now: each is seen done at its first read, and the first wait shrinks.
        var waits: [Double] = []
        for _ in 0..<50 {
            waits.append(durations.firstWait("qmclone"))
            durations.record("qmclone", elapsed: waits.last!, lastRunning: nil)
        }
        #expect(waits.first! > 3 && waits.last! < 1, "\(waits)")
        #expect(zip(waits, waits.dropFirst()).allSatisfy { $1 < $0 })
    }

    @Test func tasksOfOneLengthAreMostlyReadOnceAndSeenDoneSoonAfterTheyEnd() async throws {
        let sleeper = RecordingSleeper()
        let tasks = TimedTasks(duration: 1, sleeper: sleeper)
        let client = ProxmoxClient(endpoint: ClusterEndpoint(url: "https://pve:8006", credentials: .apiToken(id: "a@pve!b", secret: "s")),
                                   transport: tasks, sleeper: sleeper, now: { sleeper.clock.withLock { $0 } })
        for n in 1...5 {  // the type becomes known
            tasks.start(n)
            try await client.waitForTask(taskID("qmdestroy", n))
        }
        let (reads, clock) = (tasks.polls.load(ordering: .relaxed), sleeper.clock.withLock { $0 })
        for n in 6...45 {
            tasks.start(n)
            try await client.waitForTask(taskID("qmdestroy", n))
        }
        let perTask = Double(tasks.polls.load(ordering: .relaxed) - reads) / 40
        let lateness = (sleeper.clock.withLock { $0 } - clock) / 40 - 1
        // The rule before (first read at 0.9 of the estimate) read every such task twice.
        #expect(perTask < 1.5, "\(perTask) status reads per task")
        #expect(lateness < 0.15, "seen done \(lateness) s after the end on average")
    }

    @Test func tasksOfANewTypeStartedTogetherAreLearnedFromOneOfThem() async throws {
        let clock = VirtualClock()
        let tasks = VirtualTasks(duration: 3, clock: clock)
        let client = ProxmoxClient(endpoint: ClusterEndpoint(url: "https://pve:8006", credentials: .apiToken(id: "a@pve!b", secret: "s")),
                                   transport: tasks, sleeper: clock, now: { clock.now })
        let count = 10
        (1...count).forEach(tasks.start)
        try await waitTogether(client, clock, (1...count).map { ("qmcreate", $0) })
        let reads = tasks.reads.withLock { $0 }
        let total = reads.values.map(\.count).reduce(0, +)
        // Each read on the quick schedule, as before: 10 tasks x 6 reads.
        #expect(total <= 6 + 2 * (count - 1), "\(total) status reads: \(reads)")
        for (id, times) in reads {
            #expect(times.last! >= 3 && times.last! < 3.5, "task \(id) seen done at \(times.last!) s")
        }
    }

    @Test func tasksSeenDoneLateDoNotPushTheFirstWaitPastWhenTheyWereLastSeenRunning() {
        // 3 s tasks read on a new type's quick schedule, each seen done up to 1.7 s late.
        let durations = TaskDurations()
        for (lastRunning, elapsed) in [(1.94, 3.84), (2.93, 4.71), (2.28, 3.25), (2.59, 3.55), (2.48, 3.43), (2.69, 4.04)] {
            durations.record("qmcreate", elapsed: elapsed, lastRunning: lastRunning)
        }
        let wait = durations.firstWait("qmcreate")
        #expect(wait >= 2.8 && wait <= 3.1, "first wait \(wait) s for tasks of 3 s")
    }

    @Test func aWaitHoldingOffReadsItsOwnTaskWhenTheOneLearningTheTypeTakesLong() async throws {
        let clock = VirtualClock()
        let tasks = VirtualTasks(duration: 1, clock: clock)
        let client = ProxmoxClient(endpoint: ClusterEndpoint(url: "https://pve:8006", credentials: .apiToken(id: "a@pve!b", secret: "s")),
                                   transport: tasks, sleeper: clock, now: { clock.now })
        // Another wait is learning qmclone (a long copy): this 1 s task is not held up past the longest first wait.
        #expect(client.taskDurations.startScouting("qmclone"))
        tasks.start(1)
        try await waitTogether(client, clock, [("qmclone", 1)])
        let reads = tasks.reads.withLock { $0["77701"] ?? [] }
        #expect(reads.count == 1 && reads[0] >= 5 && reads[0] < 5.2, "\(reads)")
    }

    @Test func tasksWaitedOnTogetherBringTheFirstWaitDownOnceNotEachByItsStep() async throws {
        let clock = VirtualClock()
        let tasks = VirtualTasks(duration: 3, clock: clock)
        let client = ProxmoxClient(endpoint: ClusterEndpoint(url: "https://pve:8006", credentials: .apiToken(id: "a@pve!b", secret: "s")),
                                   transport: tasks, sleeper: clock, now: { clock.now })
        client.taskDurations.record("qmcreate", elapsed: 3.1, lastRunning: 3.0)  // known: about 3 s
        let (batches, size) = (8, 10)
        for batch in 0..<batches {
            let ids = (0..<size).map { batch * size + $0 + 1 }
            ids.forEach(tasks.start)
            try await waitTogether(client, clock, ids.map { ("qmcreate", $0) })
        }
        let reads = tasks.reads.withLock { $0 }
        let perTask = Double(reads.values.map(\.count).reduce(0, +)) / Double(batches * size)
        #expect(perTask < 1.4, "\(perTask) status reads per task")
        let late = reads.values.map { $0.last! - 3 }.max()!
        #expect(late < 0.35, "seen done up to \(late) s after the end")
    }

    @Test func aTaskThatFailedTeachesNothingAboutItsType() async {
        let client = taskClient(ScriptedTasks(runningPolls: 0, exitStatus: "VM is locked (backup)"), RecordingSleeper())
        await #expect(throws: ProxmoxError.self) { try await client.waitForTask(upid) }
        #expect(client.taskDurations.expectedSeconds("qmconfig") == nil, "a lock error ends a task at once")
    }
}
