import Logging
import Testing
@testable import UnaryGRPC

/// The server session paired with a test client in memory: no sockets.
final class SessionPair {
    let client = H2TestClient()
    let server: HTTP2ServerSession
    let router: Router
    let logger = silentLogger

    init(router: Router = makeTestRouter(), limits: ServerLimits = ServerLimits()) {
        self.router = router
        server = HTTP2ServerSession(router: router, limits: limits, logger: logger)
    }

    /// Moves bytes both ways; when `runHandlers`, ready calls are run and answered.
    func pump(runHandlers: Bool = true) async {
        for _ in 0..<100 {
            var moved = false
            let toServer = client.drainOutput()
            if !toServer.isEmpty {
                moved = true
                try? toServer.withUnsafeBytes { try server.receive($0) }
            }
            if runHandlers {
                for call in server.takeReadyCalls() {
                    let context = CallContext(method: call.path, deadline: call.deadline, logger: logger)
                    server.respond(streamID: call.streamID,
                                   result: await router.handle(path: call.path, message: call.message, context: context))
                }
            }
            var toClient: [UInt8] = []
            server.drainOutput(into: &toClient)
            if !toClient.isEmpty {
                moved = true
                client.receive(toClient)
            }
            if !moved { return }
        }
    }
}

@Suite struct SessionTests {
    @Test func unaryCallAnswersWithMessageAndOKTrailers() async {
        let pair = SessionPair()
        let id = pair.client.call("/test.Echo/Echo", message: stringValue("hello"))
        await pair.pump()
        let response = pair.client.responses[id]!
        #expect(response.headers[":status"] == "200")
        #expect(response.headers["content-type"] == "application/grpc")
        #expect(response.headers["grpc-status"] == nil, "status belongs in trailers when a message was sent")
        #expect(response.trailers["grpc-status"] == "0")
        #expect(decodeString(response.message) == "hello")
        #expect(response.body.prefix(5) == [0, 0, 0, 0, 7])
    }

    @Test(arguments: [
        ("/test.Nope/Echo", "unknown service test.Nope"),
        ("/test.Echo/Nope", "unknown method Nope for service test.Echo"),
        ("/csi.v1.Node/NodeGetInfo", "unknown service csi.v1.Node"),
    ])
    func unknownMethodsAreUnimplementedTrailersOnly(path: String, message: String) async {
        let probe = HandlerProbe()
        let pair = SessionPair(router: makeTestRouter(probe: probe))
        let id = pair.client.call(path, message: stringValue("x"))
        await pair.pump()
        let response = pair.client.responses[id]!
        #expect(response.grpcStatus == StatusCode.unimplemented.rawValue)
        #expect(response.headers["grpc-status"] == "12", "trailers-only: the status is in the only HEADERS frame")
        #expect(response.body.isEmpty)
        #expect(response.grpcMessage == message)
        #expect(probe.calls.load(ordering: .relaxed) == 0)
    }

    @Test func errorMessagesArePercentEncodedOnTheWireAndDecodeBack() async {
        let pair = SessionPair()
        let text = "volume \"pvc-1\" not found: 100% gone, ünïcødé\nsecond line"
        let id = pair.client.call("/test.Echo/Fail", message: stringValue(text))
        await pair.pump()
        let response = pair.client.responses[id]!
        #expect(response.grpcStatus == StatusCode.notFound.rawValue)
        let raw = response.trailers["grpc-message"] ?? response.headers["grpc-message"] ?? ""
        #expect(raw.utf8.allSatisfy { $0 >= 0x20 && $0 <= 0x7E }, "raw header must be printable ASCII: \(raw)")
        #expect(raw.contains("100%25"))
        #expect(response.grpcMessage == text)
    }

    @Test func malformedProtobufIsInternal() async {
        let pair = SessionPair()
        let id = pair.client.request(path: "/test.Echo/Echo", body: MessageFraming.frame([0xFF, 0xFF, 0xFF]))
        await pair.pump()
        #expect(pair.client.responses[id]?.grpcStatus == StatusCode.internal.rawValue)
        #expect(pair.client.responses[id]?.grpcMessage?.contains("unmarshalling") == true)
    }

    @Test func compressedFlagWithoutEncodingIsInternal() async {
        let pair = SessionPair()
        var body = MessageFraming.frame(stringValue("x"))
        body[0] = 1
        let id = pair.client.request(path: "/test.Echo/Echo", body: body)
        await pair.pump()
        #expect(pair.client.responses[id]?.grpcStatus == StatusCode.internal.rawValue)
        #expect(pair.client.responses[id]?.grpcMessage?.contains("compressed flag") == true)
    }

    @Test func unsupportedEncodingIsUnimplementedAndNamesWhatIsAccepted() async {
        let pair = SessionPair()
        let id = pair.client.request(path: "/test.Echo/Echo", body: MessageFraming.frame(stringValue("x")),
                                     headers: [("grpc-encoding", "gzip")])
        await pair.pump()
        let response = pair.client.responses[id]!
        #expect(response.grpcStatus == StatusCode.unimplemented.rawValue)
        #expect(response.headers["grpc-accept-encoding"] == "identity")
    }

    @Test func oversizedMessageIsRefusedBeforeTheHandlerRuns() async {
        let probe = HandlerProbe()
        var limits = ServerLimits()
        limits.maxRequestMessageBytes = 1024
        let pair = SessionPair(router: makeTestRouter(probe: probe), limits: limits)
        let id = pair.client.call("/test.Echo/Echo", message: stringValue(String(repeating: "a", count: 2000)))
        await pair.pump()
        #expect(pair.client.responses[id]?.grpcStatus == StatusCode.resourceExhausted.rawValue)
        #expect(pair.client.responses[id]?.grpcMessage?.contains("larger than max") == true)
        #expect(probe.calls.load(ordering: .relaxed) == 0)
    }

    @Test func defaultLimitAcceptsFourMebibytesAndRefusesOneByteMore() async {
        let pair = SessionPair()
        let limit = ServerLimits().maxRequestMessageBytes
        var atLimit = MessageFraming.frame([UInt8](repeating: 0, count: limit))
        // A valid message of exactly `limit` bytes: field 1 (bytes) of StringValue, sized to fit.
        let payload = limit - 5
        atLimit = MessageFraming.frame([0x0A, 0x80 | UInt8(payload & 0x7F), 0x80 | UInt8((payload >> 7) & 0x7F),
                                        0x80 | UInt8((payload >> 14) & 0x7F), UInt8(payload >> 21)]
                                       + [UInt8](repeating: UInt8(ascii: "a"), count: payload))
        let ok = pair.client.request(path: "/test.Echo/Echo", body: atLimit)
        let tooBig = pair.client.request(path: "/test.Echo/Echo", body: MessageFraming.frame([UInt8](repeating: 0, count: limit + 1)))
        await pair.pump()
        #expect(pair.client.responses[ok]?.grpcStatus == 0)
        #expect(decodeString(pair.client.responses[ok]?.message)?.count == payload)
        #expect(pair.client.responses[tooBig]?.grpcStatus == StatusCode.resourceExhausted.rawValue)
    }

    @Test(arguments: [
        ("two messages", MessageFraming.frame(stringValue("a")) + MessageFraming.frame(stringValue("b"))),
        ("no message", []),
        ("truncated prefix", [0, 0, 0]),
        ("truncated message", Array(MessageFraming.frame(stringValue("abcdef")).dropLast(2))),
    ])
    func badFramingIsInternal(_ name: String, body: [UInt8]) async {
        let pair = SessionPair()
        let id = pair.client.request(path: "/test.Echo/Echo", body: body)
        await pair.pump()
        #expect(pair.client.responses[id]?.grpcStatus == StatusCode.internal.rawValue, "\(name)")
    }

    @Test func wrongContentTypeIs415() async {
        let pair = SessionPair()
        let id = pair.client.request(path: "/test.Echo/Echo", body: MessageFraming.frame(stringValue("x")),
                                     contentType: "application/json")
        await pair.pump()
        #expect(pair.client.responses[id]?.headers[":status"] == "415")
    }

    @Test func deadlinePassedAnswersDeadlineExceededAndReportsTheStream() async {
        let pair = SessionPair()
        let id = pair.client.call("/test.Echo/Slow", message: milliseconds(60_000), headers: [("grpc-timeout", "50m")])
        await pair.pump(runHandlers: false)
        let calls = pair.server.takeReadyCalls()
        #expect(calls.count == 1)
        let deadline = try! #require(pair.server.nextDeadline())
        #expect(pair.server.expireDeadlines(now: MonotonicInstant(nanoseconds: deadline.nanoseconds - 1)).isEmpty)
        #expect(pair.server.expireDeadlines(now: deadline) == [id])
        await pair.pump(runHandlers: false)
        #expect(pair.client.responses[id]?.grpcStatus == StatusCode.deadlineExceeded.rawValue)
        // The late answer of the handler is dropped.
        pair.server.respond(streamID: id, result: .success(milliseconds(1)))
        await pair.pump(runHandlers: false)
        #expect(pair.client.responses[id]?.message == nil)
    }

    @Test func malformedTimeoutIsInternal() async {
        let pair = SessionPair()
        let id = pair.client.call("/test.Echo/Echo", message: stringValue("x"), headers: [("grpc-timeout", "10x")])
        await pair.pump()
        #expect(pair.client.responses[id]?.grpcStatus == StatusCode.internal.rawValue)
    }

    @Test func clientResetOfARunningCallIsReportedForCancellation() async {
        let pair = SessionPair()
        let id = pair.client.call("/test.Echo/Slow", message: milliseconds(60_000))
        await pair.pump(runHandlers: false)
        #expect(pair.server.takeReadyCalls().map(\.streamID) == [id])
        pair.client.reset(id)
        await pair.pump(runHandlers: false)
        #expect(pair.server.takeClosedDispatchedStreams() == [id])
    }

    @Test func manyInterleavedStreamsAreEachAnsweredWithTheirOwnMessage() async {
        let pair = SessionPair()
        var expected: [Int32: String] = [:]
        for index in 0..<200 {
            let text = "call-\(index)"
            expected[pair.client.call("/test.Echo/Echo", message: stringValue(text))] = text
        }
        await pair.pump(runHandlers: false)
        // Answer in reverse arrival order: responses must not depend on order.
        for call in pair.server.takeReadyCalls().reversed() {
            pair.server.respond(streamID: call.streamID, result: .success(call.message))
        }
        await pair.pump(runHandlers: false)
        #expect(pair.client.responses.count == 200)
        for (id, text) in expected {
            #expect(decodeString(pair.client.responses[id]?.message) == text)
            #expect(pair.client.responses[id]?.grpcStatus == 0)
        }
    }

    @Test func goAwayLetsOpenCallsFinishAndRefusesNewOnes() async {
        let pair = SessionPair()
        let inFlight = pair.client.call("/test.Echo/Echo", message: stringValue("before"))
        await pair.pump(runHandlers: false)
        let calls = pair.server.takeReadyCalls()
        pair.server.goAway()
        await pair.pump(runHandlers: false)
        let late = pair.client.call("/test.Echo/Echo", message: stringValue("after"))
        await pair.pump(runHandlers: false)
        #expect(pair.server.takeReadyCalls().isEmpty, "no new stream after GOAWAY")
        for call in calls { pair.server.respond(streamID: call.streamID, result: .success(call.message)) }
        await pair.pump(runHandlers: false)
        #expect(decodeString(pair.client.responses[inFlight]?.message) == "before")
        #expect(pair.client.responses[late]?.message == nil)
        #expect(!pair.server.isAlive, "session finished once the last open stream closed")
    }
}
