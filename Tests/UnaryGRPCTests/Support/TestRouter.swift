#if canImport(Glibc)
import Glibc
#endif
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
    // Answers the name of the thread it ran on (an immediate handler runs on the connection's event loop).
    router.registerImmediate("/test.Echo/WhereAmI") { (_: Google_Protobuf_StringValue, _) -> Google_Protobuf_StringValue in
        probe.calls.add(1, ordering: .relaxed)
        return Google_Protobuf_StringValue(threadName())
    }
    // Where a handler on the loop runs: as the request arrives, then before and after the
    // work it left for later awaited something on Swift's pool, "arrived|before|after";
    // asked to wait 0 ms it answers at once, "arrived".
    router.registerOnLoop("/test.Echo/WhereAmIOnLoop") { (request: Google_Protobuf_Int64Value, _) -> Answer<Google_Protobuf_StringValue> in
        probe.calls.add(1, ordering: .relaxed)
        let arrived = threadName()
        guard request.value > 0 else { return .now(Google_Protobuf_StringValue(arrived)) }
        return .later {
            let before = threadName()
            let elsewhere = await Task.detached { threadName() }.value
            do {
                try await Task.sleep(nanoseconds: UInt64(request.value) * 1_000_000)
            } catch {
                probe.cancellations.add(1, ordering: .relaxed)
                throw error
            }
            return Google_Protobuf_StringValue("\(arrived)|\(before)|\(threadName())|\(elsewhere)")
        }
    }
    router.register("/test.Echo/WhereAmIAsync") { (_: Google_Protobuf_StringValue, _) -> Google_Protobuf_StringValue in
        Google_Protobuf_StringValue(threadName())
    }
    return router
}

func threadName() -> String {
    let fd = open("/proc/thread-self/comm", O_RDONLY)
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 32)
    let count = read(fd, &buffer, buffer.count)
    return String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
}

func threadCount() -> Int {
    let fd = open("/proc/self/status", O_RDONLY)
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 8192)
    let count = read(fd, &buffer, buffer.count)
    let status = String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self)
    return status.split(separator: "\n").first { $0.hasPrefix("Threads:") }.flatMap { Int($0.dropFirst(8).trimmingPrefix(while: \.isWhitespace)) } ?? 0
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
