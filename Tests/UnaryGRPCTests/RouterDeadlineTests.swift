import Logging
import SwiftProtobuf
import Synchronization
import Testing
@testable import UnaryGRPC

/// An answer computed on the loop after the call's deadline goes out as
/// DEADLINE_EXCEEDED, and the log line and metrics say so too.
@Suite struct RouterDeadlineTests {
    final class SeenCodes: CallObserver {
        let codes = Mutex<[StatusCode]>([])
        func callFinished(method: String, code: StatusCode, seconds: Double) { codes.withLock { $0.append(code) } }
    }

    private func call(_ router: Router, deadline: MonotonicInstant?) async -> Result<[UInt8], RPCError> {
        await router.handle(path: "/test.Echo/Now", message: try! Google_Protobuf_StringValue.with { $0.value = "hi" }.serializedBytes(),
                            context: CallContext(method: "/test.Echo/Now", deadline: deadline, logger: silentLogger))
    }

    @Test func anAnswerReadyOnlyAfterTheDeadlineIsDeadlineExceededForClientAndMetrics() async throws {
        let seen = SeenCodes()
        var router = Router(observer: seen)
        router.registerImmediate("/test.Echo/Now") { (request: Google_Protobuf_StringValue, _) in request }

        let late = await call(router, deadline: MonotonicInstant(nanoseconds: 1))
        guard case let .failure(error) = late else { Issue.record("answered \(late) past its deadline"); return }
        #expect(error.code == .deadlineExceeded)

        let inTime = await call(router, deadline: MonotonicInstant.now().advanced(byNanoseconds: 60_000_000_000))
        let bytes = try inTime.get()
        #expect(try Google_Protobuf_StringValue(serializedBytes: bytes).value == "hi")
        #expect(seen.codes.withLock { $0 } == [.deadlineExceeded, .ok])
    }
}
