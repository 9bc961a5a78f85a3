#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization
import Testing
@testable import UnaryGRPC

/// A fresh directory for one test's socket.
func temporaryDirectory() -> String {
    var template = Array("/tmp/unarygrpc-test-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
}

func isSocket(_ path: String) -> Bool {
    var info = stat()
    return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK
}

@Suite(.serialized) struct ServerSocketTests {
    let logger = silentLogger

    func startServer(_ endpoint: Endpoint, probe: HandlerProbe = HandlerProbe()) throws -> (Server, Endpoint) {
        let server = try Server(endpoint: endpoint, router: makeTestRouter(probe: probe), logger: logger)
        let bound = try server.start()
        return (server, bound)
    }

    @Test func servesOverUnixSocketWithMode0660AndRemovesItOnShutdown() throws {
        let path = temporaryDirectory() + "/nested/csi.sock"
        let (server, bound) = try startServer(.unix(path: path))
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o660)
        let client = try SocketClient(bound)
        let id = client.h2.call("/test.Echo/Echo", message: stringValue("over unix"))
        #expect(client.exchange(until: SocketClient.closed([id])))
        #expect(decodeString(client.h2.responses[id]?.message) == "over unix")
        server.shutdown(gracePeriodNanoseconds: 1_000_000_000)
        #expect(!isSocket(path))
    }

    @Test func staleSocketFileIsReplaced() throws {
        let path = temporaryDirectory() + "/csi.sock"
        // A socket file whose server is gone: bound, then closed without unlink.
        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: path.utf8); raw[path.utf8.count] = 0 }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(stale, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(stale)
        #expect(isSocket(path))
        let (server, bound) = try startServer(.unix(path: path))
        let client = try SocketClient(bound)
        let id = client.h2.call("/test.Echo/Echo", message: stringValue("fresh"))
        #expect(client.exchange(until: SocketClient.closed([id])))
        server.shutdown(gracePeriodNanoseconds: 1_000_000_000)
    }

    @Test func socketOfALiveServerIsNotStolen() throws {
        let path = temporaryDirectory() + "/csi.sock"
        let (first, bound) = try startServer(.unix(path: path))
        let second = try Server(endpoint: .unix(path: path), router: makeTestRouter(), logger: logger)
        #expect {
            try second.start()
        } throws: { error in
            "\(error)".contains("in use by a running server")
        }
        let client = try SocketClient(bound)
        let id = client.h2.call("/test.Echo/Echo", message: stringValue("still mine"))
        #expect(client.exchange(until: SocketClient.closed([id])))
        #expect(decodeString(client.h2.responses[id]?.message) == "still mine")
        first.shutdown(gracePeriodNanoseconds: 1_000_000_000)
    }

    @Test func aFileThatIsNotASocketIsLeftAlone() throws {
        let path = temporaryDirectory() + "/csi.sock"
        let fd = open(path, O_CREAT | O_WRONLY, 0o600)
        _ = write(fd, "data", 4)
        close(fd)
        let server = try Server(endpoint: .unix(path: path), router: makeTestRouter(), logger: logger)
        #expect(throws: Server.StartError.self) { try server.start() }
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_size == 4)
    }

    @Test func aSlowCallNeverBlocksOthersOnTheSameConnection() throws {
        let (server, bound) = try startServer(.tcp(host: "127.0.0.1", port: 0))
        defer { server.shutdown(gracePeriodNanoseconds: 100_000_000) }
        let client = try SocketClient(bound)
        let slow = client.h2.call("/test.Echo/Slow", message: milliseconds(30_000))
        let fast = (0..<50).map { client.h2.call("/test.Echo/Echo", message: stringValue("fast-\($0)")) }
        #expect(client.exchange(until: SocketClient.closed(fast)))
        #expect(client.h2.responses[slow]?.closed != true, "the slow call is still running")
        for (index, id) in fast.enumerated() {
            #expect(decodeString(client.h2.responses[id]?.message) == "fast-\(index)")
        }
    }

    @Test func anImmediateHandlerRunsOnTheEventLoopAndAnAsyncOneBesideIt() throws {
        let (server, bound) = try startServer(.unix(path: temporaryDirectory() + "/csi.sock"))
        defer { server.shutdown(gracePeriodNanoseconds: 100_000_000) }
        let client = try SocketClient(bound)
        let slow = client.h2.call("/test.Echo/Slow", message: milliseconds(30_000))
        let inline = client.h2.call("/test.Echo/WhereAmI", message: stringValue(""))
        let echo = client.h2.call("/test.Echo/Echo", message: stringValue("async"))
        #expect(client.exchange(until: SocketClient.closed([inline, echo])))
        #expect(decodeString(client.h2.responses[inline]?.message)?.hasPrefix("grpc-loop-") == true,
                "\(decodeString(client.h2.responses[inline]?.message) ?? "no answer")")
        #expect(decodeString(client.h2.responses[echo]?.message) == "async")
        #expect(client.h2.responses[slow]?.closed != true)
    }

    @Test func aHandlerOnTheLoopRunsThereAcrossItsAwaitsAndWaitingHoldsUpNoOne() throws {
        let (server, bound) = try startServer(.unix(path: temporaryDirectory() + "/csi.sock"))
        defer { server.shutdown(gracePeriodNanoseconds: 100_000_000) }
        let client = try SocketClient(bound)
        let waiting = (0..<4).map { _ in client.h2.call("/test.Echo/WhereAmIOnLoop", message: milliseconds(300)) }
        let quick = (0..<20).map { client.h2.call("/test.Echo/Echo", message: stringValue("q\($0)")) }
        let now = client.h2.call("/test.Echo/WhereAmIOnLoop", message: milliseconds(0))
        let elsewhere = client.h2.call("/test.Echo/WhereAmIAsync", message: stringValue(""))
        #expect(client.exchange(until: SocketClient.closed(quick + [now, elsewhere])))
        #expect(waiting.allSatisfy { client.h2.responses[$0]?.closed != true }, "the loop handlers still wait")
        #expect(decodeString(client.h2.responses[now]?.message)?.hasPrefix("grpc-loop-") == true)
        #expect(client.exchange(until: SocketClient.closed(waiting)))
        for id in waiting {
            let answer = decodeString(client.h2.responses[id]?.message) ?? "no answer"
            let parts = answer.split(separator: "|").map(String.init)
            #expect(parts.count == 4 && parts[0].hasPrefix("grpc-loop-") && parts[1] == parts[0] && parts[2] == parts[0]
                && !parts[3].hasPrefix("grpc-loop-"), "\(answer)")
        }
        #expect(decodeString(client.h2.responses[elsewhere]?.message)?.hasPrefix("grpc-loop-") == false)
    }

    @Test func aDeadlineCancelsAHandlerOnTheLoop() async throws {
        let probe = HandlerProbe()
        let (server, bound) = try startServer(.tcp(host: "127.0.0.1", port: 0), probe: probe)
        defer { server.shutdown(gracePeriodNanoseconds: 100_000_000) }
        let client = try SocketClient(bound)
        let call = client.h2.call("/test.Echo/WhereAmIOnLoop", message: milliseconds(30_000), headers: [("grpc-timeout", "100m")])
        #expect(client.exchange(until: SocketClient.closed([call])))
        #expect(client.h2.responses[call]?.grpcStatus == StatusCode.deadlineExceeded.rawValue)
        try await waitForCancellation(probe)
        #expect(probe.cancellations.load(ordering: .relaxed) == 1)
    }

    @Test func manyConnectionsAreServedWithoutAThreadEach() throws {
        let (server, bound) = try startServer(.unix(path: temporaryDirectory() + "/csi.sock"))
        defer { server.shutdown(gracePeriodNanoseconds: 100_000_000) }
        let before = threadCount()
        let clients = try (0..<150).map { _ in try SocketClient(bound) }
        let calls = clients.enumerated().map { index, client in client.h2.call("/test.Echo/Echo", message: stringValue("c\(index)")) }
        for (index, client) in clients.enumerated() {
            #expect(client.exchange(until: SocketClient.closed([calls[index]])))
            #expect(decodeString(client.h2.responses[calls[index]]?.message) == "c\(index)")
        }
        #expect(server.openConnectionCount == 150)
        // A thread per connection would have added 150; other suites' servers may add a few.
        #expect(threadCount() - before < 30, "threads \(before) -> \(threadCount())")
    }

    @Test func deadlineCancelsTheHandlerAndAnswersDeadlineExceeded() async throws {
        let probe = HandlerProbe()
        let (server, bound) = try startServer(.tcp(host: "127.0.0.1", port: 0), probe: probe)
        defer { server.shutdown(gracePeriodNanoseconds: 100_000_000) }
        let client = try SocketClient(bound)
        let id = client.h2.call("/test.Echo/Slow", message: milliseconds(30_000), headers: [("grpc-timeout", "100m")])
        #expect(client.exchange(until: SocketClient.closed([id])))
        #expect(client.h2.responses[id]?.grpcStatus == StatusCode.deadlineExceeded.rawValue)
        // The handler sees its cancellation shortly after.
        try await waitForCancellation(probe)
        #expect(probe.cancellations.load(ordering: .relaxed) == 1)
    }

    @Test func clientCancellationCancelsTheHandler() async throws {
        let probe = HandlerProbe()
        let (server, bound) = try startServer(.tcp(host: "127.0.0.1", port: 0), probe: probe)
        defer { server.shutdown(gracePeriodNanoseconds: 100_000_000) }
        let client = try SocketClient(bound)
        let id = client.h2.call("/test.Echo/Slow", message: milliseconds(30_000))
        client.exchange(timeoutMilliseconds: 200) { _ in probe.calls.load(ordering: .relaxed) == 1 }
        client.h2.reset(id)
        client.exchange(timeoutMilliseconds: 100) { _ in false }
        try await waitForCancellation(probe)
        #expect(probe.cancellations.load(ordering: .relaxed) == 1)
    }

    @Test func gracefulShutdownLetsInFlightCallsFinishThenStops() throws {
        let path = temporaryDirectory() + "/csi.sock"
        let (server, bound) = try startServer(.unix(path: path))
        let client = try SocketClient(bound)
        let id = client.h2.call("/test.Echo/Slow", message: milliseconds(300))
        client.exchange(timeoutMilliseconds: 100) { _ in false }

        let shutdownDone = ManagedFlag()
        try spawnThread(named: "test-shutdown") {
            server.shutdown(gracePeriodNanoseconds: 5_000_000_000)
            shutdownDone.set()
        }
        #expect(client.exchange(until: SocketClient.closed([id])))
        #expect(client.h2.responses[id]?.grpcStatus == 0, "the in-flight call completed")
        #expect(client.h2.goAwayReceived || client.exchange(timeoutMilliseconds: 1_000) { $0.goAwayReceived })
        for _ in 0..<200 where !shutdownDone.isSet { usleep(10_000) }
        #expect(shutdownDone.isSet)
        #expect(!isSocket(path))
        #expect(throws: SystemCallError.self) { _ = try SocketClient(bound) }
    }

    @Test func shutdownCancelsCallsThatOutliveTheGracePeriod() async throws {
        let probe = HandlerProbe()
        let (server, bound) = try startServer(.tcp(host: "127.0.0.1", port: 0), probe: probe)
        let client = try SocketClient(bound)
        _ = client.h2.call("/test.Echo/Slow", message: milliseconds(60_000))
        client.exchange(timeoutMilliseconds: 500) { _ in probe.calls.load(ordering: .relaxed) == 1 }
        server.shutdown(gracePeriodNanoseconds: 100_000_000)
        #expect(server.openConnectionCount == 0)
        try await waitForCancellation(probe)
        #expect(probe.cancellations.load(ordering: .relaxed) == 1)
    }
}

final class ManagedFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}

/// Waits up to 10 s for the handler's cancellation to show, sleeping as a task: a
/// blocking wait would hold one of the few cooperative threads the cancelled handler
/// may need to get to its cancellation point (suites run side by side).
private func waitForCancellation(_ probe: HandlerProbe) async throws {
    for _ in 0..<1_000 where probe.cancellations.load(ordering: .relaxed) == 0 {
        try await Task.sleep(nanoseconds: 10_000_000)
    }
}
