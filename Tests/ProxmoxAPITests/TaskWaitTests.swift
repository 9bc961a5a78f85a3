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

    @Test func givesUpAtTheDeadline() async {
        let sleeper = RecordingSleeper()
        await #expect(throws: ProxmoxError.taskTimedOut(upid: upid)) {
            try await taskClient(ScriptedTasks(runningPolls: 1_000_000, exitStatus: "OK"), sleeper).waitForTask(upid, timeout: 30)
        }
        #expect(sleeper.clock.withLock { $0 } <= 30)
    }
}
