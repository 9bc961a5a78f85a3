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

func taskID(_ type: String, _ n: Int) -> String { "UPID:pve1:7770\(n):00005678:6B000000:\(type):100:csi@pve!csi:" }

let upid = "UPID:pve1:00001234:00005678:6B000000:qmconfig:100:csi@pve!csi:"

func taskClient(_ transport: ScriptedTasks, _ sleeper: RecordingSleeper) -> ProxmoxClient {
    ProxmoxClient(endpoint: ClusterEndpoint(url: "https://pve:8006", credentials: .apiToken(id: "a@pve!b", secret: "s")),
                  transport: transport, sleeper: sleeper, now: { sleeper.clock.withLock { $0 } })
}

@Suite struct TaskWaitTests {
    @Test func pollsFastFirstThenBacksOffToTheCap() async throws {
        let sleeper = RecordingSleeper()
        let exit = try await taskClient(ScriptedTasks(runningPolls: 8, exitStatus: "OK"), sleeper).waitForTask(upid, maxPollInterval: 1)
        #expect(exit == "OK")
        #expect(sleeper.waits.withLock { $0 } == [0.05, 0.1, 0.2, 0.4, 0.8, 1, 1, 1])
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
}
