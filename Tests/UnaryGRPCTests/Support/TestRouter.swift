import Logging
import SwiftProtobuf
import Synchronization
@testable import UnaryGRPC

/// Counts and flags the test handlers set, shared across tasks.
final class HandlerProbe: Sendable {
    let calls = Atomic<Int>(0)
    let cancellations = Atomic<Int>(0)
}

/// Methods under `/test.Echo/`: Echo answers its input, Fail throws the
/// error named in its input, Slow sleeps for the milliseconds it is given.
func makeTestRouter(probe: HandlerProbe = HandlerProbe(), logger: Logger = silentLogger) -> Router {
    var router = Router()
    router.register("/test.Echo/Echo") { (request: Google_Protobuf_StringValue, _) -> Google_Protobuf_StringValue in
        probe.calls.add(1, ordering: .relaxed)
        return request
    }
    router.register("/test.Echo/Fail") { (request: Google_Protobuf_StringValue, _) -> Google_Protobuf_StringValue in
        probe.calls.add(1, ordering: .relaxed)
        throw RPCError(.notFound, request.value)
    }
    router.register("/test.Echo/Slow") { (request: Google_Protobuf_Int64Value, _) -> Google_Protobuf_Int64Value in
        probe.calls.add(1, ordering: .relaxed)
        do {
            try await Task.sleep(nanoseconds: UInt64(request.value) * 1_000_000)
        } catch {
            probe.cancellations.add(1, ordering: .relaxed)
            throw error
        }
        return request
    }
    return router
}

func bytes(_ message: some SwiftProtobuf.Message) -> [UInt8] {
    try! message.serializedBytes()
}

func stringValue(_ text: String) -> [UInt8] { bytes(Google_Protobuf_StringValue(text)) }

func decodeString(_ bytes: [UInt8]?) -> String? {
    bytes.flatMap { try? Google_Protobuf_StringValue(serializedBytes: $0).value }
}

func milliseconds(_ value: Int64) -> [UInt8] { bytes(Google_Protobuf_Int64Value(value)) }

/// Tests log nowhere; the log line itself is tested in CSIDriverTests.
let silentLogger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
