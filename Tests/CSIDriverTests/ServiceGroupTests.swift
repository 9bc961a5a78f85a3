#if canImport(Glibc)
import Glibc
#endif
@testable import CSIDriver
import FakeProxmox
import Logging
import Synchronization
import Testing

/// The process's services start in order, stop in reverse order on a signal,
/// and a service that cannot start stops the ones already started.
@Suite(.serialized) struct ServiceGroupTests {
    final class Recorder: Sendable {
        let events = Mutex<[String]>([])
        func add(_ event: String) { events.withLock { $0.append(event) } }
    }

    struct Recorded: DriverService {
        let name: String
        let recorder: Recorder
        var failsToStart = false

        struct CannotStart: Error {}

        func start() throws {
            if failsToStart { throw CannotStart() }
            recorder.add("start \(name)")
        }

        func stop(gracePeriod: Double) async { recorder.add("stop \(name) within \(Int(gracePeriod))s") }
    }

    let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    @Test(arguments: [SIGTERM, SIGINT])
    func aSignalStopsTheServicesInReverseOrder(signal: Int32) async throws {
        let recorder = Recorder()
        let group = ServiceGroup(services: ["a", "b", "c"].map { Recorded(name: $0, recorder: recorder) }, gracePeriod: 7, logger: logger)
        // The signal as the handler's pipe would deliver it: a real process-wide signal
        // would interrupt the calls of tests running beside this one (the process test sends real ones).
        let delivered = Gate()
        let running = Task { try await group.run(until: { await delivered.wait(); return signal }) }
        while recorder.events.withLock({ $0.count }) < 3 { try await Task.sleep(nanoseconds: 5_000_000) }
        #expect(recorder.events.withLock { $0 } == ["start a", "start b", "start c"])
        await delivered.open()
        #expect(try await running.value == signal)
        #expect(recorder.events.withLock { $0 } == ["start a", "start b", "start c", "stop c within 7s", "stop b within 7s", "stop a within 7s"])
    }

    @Test func aServiceThatCannotStartStopsTheStartedOnesAndFailsTheGroup() async throws {
        let recorder = Recorder()
        let group = ServiceGroup(services: [Recorded(name: "a", recorder: recorder), Recorded(name: "b", recorder: recorder, failsToStart: true),
                                            Recorded(name: "c", recorder: recorder)], gracePeriod: 1, logger: logger)
        await #expect(throws: Recorded.CannotStart.self) { try await group.run(until: { SIGTERM }) }
        #expect(recorder.events.withLock { $0 } == ["start a", "stop a within 1s"])
    }
}
