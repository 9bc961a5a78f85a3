import Testing
@testable import UnaryGRPC

@Suite struct GRPCTimeoutTests {
    @Test(arguments: [
        ("1H", UInt64(3_600_000_000_000)), ("2M", 120_000_000_000), ("10S", 10_000_000_000),
        ("500m", 500_000_000), ("250u", 250_000), ("7n", 7), ("99999999S", 99_999_999_000_000_000),
    ])
    func parsesEveryUnit(_ header: String, nanoseconds: UInt64) {
        #expect(GRPCTimeout.parse(Array(header.utf8)) == nanoseconds)
    }

    @Test(arguments: ["", "S", "10", "10s", "10x", "-1S", "123456789S", " 1S", "1.5S"])
    func rejectsMalformed(_ header: String) {
        #expect(GRPCTimeout.parse(Array(header.utf8)) == nil)
    }
}

@Suite struct GRPCMessageEncodingTests {
    @Test(arguments: ["plain text", "100%", "ünïcode ✓", "line\nbreak\ttab", "", "%41 stays"])
    func roundTrips(_ text: String) {
        let encoded = GRPCMessageEncoding.encode(text)
        #expect(encoded.utf8.allSatisfy { $0 >= 0x20 && $0 <= 0x7E })
        #expect(GRPCMessageEncoding.decode(encoded) == text)
    }

    @Test func encodesOnlyWhatMustBeEncoded() {
        #expect(GRPCMessageEncoding.encode("a b%\n") == "a b%25%0A")
    }

    @Test func decodingLeavesBrokenEscapesAlone() {
        #expect(GRPCMessageEncoding.decode("50%") == "50%")
        #expect(GRPCMessageEncoding.decode("%zz") == "%zz")
    }
}

@Suite struct FramingTests {
    @Test func framePrefixesLengthBigEndian() {
        #expect(MessageFraming.frame([1, 2, 3]) == [0, 0, 0, 0, 3, 1, 2, 3])
        #expect(MessageFraming.frame([UInt8](repeating: 9, count: 0x10203)).prefix(5) == [0, 0, 1, 2, 3])
    }

    @Test func readerAssemblesAMessageSplitAnywhere() throws {
        let framed = MessageFraming.frame(Array("hello world".utf8))
        for split in 0...framed.count {
            var reader = UnaryRequestReader(maxMessageBytes: 100)
            try framed[..<split].withUnsafeBytes { try reader.append($0) }
            try framed[split...].withUnsafeBytes { try reader.append($0) }
            #expect(try reader.finish() == Array("hello world".utf8))
        }
    }

    @Test func readerRefusesOversizeFromThePrefixAlone() {
        var reader = UnaryRequestReader(maxMessageBytes: 10)
        #expect(throws: UnaryRequestReader.Failure.tooLarge(declared: 11, limit: 10)) {
            try ([0, 0, 0, 0, 11] as [UInt8]).withUnsafeBytes { try reader.append($0) }
        }
    }

    @Test func emptyMessageIsValid() throws {
        var reader = UnaryRequestReader(maxMessageBytes: 10)
        try ([0, 0, 0, 0, 0] as [UInt8]).withUnsafeBytes { try reader.append($0) }
        #expect(try reader.finish() == [])
    }
}

@Suite struct EndpointTests {
    @Test(arguments: [
        ("unix:///csi/csi.sock", Endpoint.unix(path: "/csi/csi.sock")),
        ("/var/lib/kubelet/plugins/x/csi.sock", Endpoint.unix(path: "/var/lib/kubelet/plugins/x/csi.sock")),
        ("unix:relative.sock", Endpoint.unix(path: "relative.sock")),
        ("tcp://127.0.0.1:10000", Endpoint.tcp(host: "127.0.0.1", port: 10000)),
        ("tcp://[::1]:0", Endpoint.tcp(host: "::1", port: 0)),
    ])
    func parses(_ text: String, expected: Endpoint) throws {
        #expect(try Endpoint(parsing: text) == expected)
    }

    @Test(arguments: [
        ("http://x", "only unix:// and tcp://"),
        ("unix://relative", "absolute path"),
        ("tcp://127.0.0.1", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:70000", "port"),
        ("tcp://:80", "host is empty"),
        ("", "empty"),
        ("/" + String(repeating: "a", count: 120), "limit is 107"),
    ])
    func refusesWithTheReason(_ text: String, reason: String) {
        do {
            _ = try Endpoint(parsing: text)
            Issue.record("\(text) was accepted")
        } catch {
            #expect(error.description.contains(reason), "\(error)")
        }
    }
}

@Suite struct RPCErrorTests {
    struct DomainError: RPCErrorConvertible {
        var rpcError: RPCError { RPCError(.failedPrecondition, "volume is attached to VM 101") }
    }

    @Test func mapsErrorsOnce() {
        #expect(RPCError(from: DomainError()).code == .failedPrecondition)
        #expect(RPCError(from: CancellationError()).code == .cancelled)
        #expect(RPCError(from: CancellationError(), deadlinePassed: true).code == .deadlineExceeded)
        #expect(RPCError(from: SystemCallError(call: "mount", errno: 1)).code == .internal)
    }
}
