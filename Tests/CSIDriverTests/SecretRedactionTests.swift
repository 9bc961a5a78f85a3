import CSIDriver
import CSIProto
import Foundation
import Logging
import Synchronization
import Testing
import UnaryGRPC

/// Collects log lines in memory.
final class CapturedLines: Sendable {
    private let lines = Mutex<[String]>([])
    var all: [String] { lines.withLock { $0 } }
    func sink() -> LineLogHandler.Sink { { line in self.lines.withLock { $0.append(line) } } }
}

@Suite struct SecretRedactionTests {
    /// Every message of proto/csi.proto with a field marked `(csi_secret) = true`.
    static func messagesWithSecretsInProto() throws -> Set<String> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("proto/csi.proto"), encoding: .utf8)
        var current: String?
        var found: Set<String> = []
        for line in text.split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("message "), line.hasPrefix("message ") {
                current = String(trimmed.dropFirst("message ".count).prefix { $0 != " " && $0 != "{" })
            }
            if trimmed.contains("(csi_secret) = true"), !trimmed.hasPrefix("//"), let current {
                found.insert("csi.v1.\(current)")
            }
        }
        return found
    }

    @Test func everySecretBearingRequestInTheProtoIsRedacted() throws {
        let inProto = try Self.messagesWithSecretsInProto()
        let redacted = Set(requestsCarryingSecrets.map { $0.protoMessageName })
        #expect(inProto.count >= 19)
        #expect(inProto == redacted)
    }

    @Test(arguments: [LogFormat.text, .json])
    func callLogLinesNeverContainSecretValues(format: LogFormat) async throws {
        let captured = CapturedLines()
        let logger = Logger(label: "test") { label in
            LineLogHandler(label: label, level: .debug, format: format, sink: captured.sink())
        }
        var router = Router()
        router.register("/csi.v1.Controller/CreateVolume") { (request: Csi_V1_CreateVolumeRequest, _) -> Csi_V1_CreateVolumeResponse in
            #expect(request.secrets["password"] == "hunter2-s3cr3t", "the handler still gets the real secret")
            return Csi_V1_CreateVolumeResponse()
        }
        router.register("/csi.v1.Node/NodeStageVolume") { (_: Csi_V1_NodeStageVolumeRequest, _) -> Csi_V1_NodeStageVolumeResponse in
            throw RPCError(.invalidArgument, "staging_target_path is required")
        }
        let create = Csi_V1_CreateVolumeRequest.with {
            $0.name = "pvc-1"
            $0.secrets = ["password": "hunter2-s3cr3t", "token": "PVEAPIToken=root@pam!csi=abc-123"]
        }
        let stage = Csi_V1_NodeStageVolumeRequest.with { $0.secrets = ["key": "another-s3cr3t"] }
        let _: Csi_V1_CreateVolumeResponse = try await call(router, "/csi.v1.Controller/CreateVolume", create, logger: logger)
        await #expect(throws: RPCError.self) {
            let _: Csi_V1_NodeStageVolumeResponse = try await call(router, "/csi.v1.Node/NodeStageVolume", stage, logger: logger)
        }

        let lines = captured.all
        #expect(lines.count == 2, "one line per call")
        let joined = lines.joined()
        for secret in ["hunter2-s3cr3t", "abc-123", "another-s3cr3t"] {
            #expect(!joined.contains(secret))
        }
        #expect(joined.contains("<redacted>"))
        #expect(joined.contains("pvc-1"), "non-secret fields are still logged at debug level")
        #expect(lines[0].contains("/csi.v1.Controller/CreateVolume") && lines[0].contains("OK"))
        #expect(lines[1].contains("INVALID_ARGUMENT") && lines[1].contains("grpc.duration_ms"))
    }

    @Test func jsonLinesAreValidJSON() throws {
        let captured = CapturedLines()
        let handler = LineLogHandler(label: "t", level: .info, format: .json, sink: captured.sink())
        var logger = Logger(label: "t") { _ in handler }
        logger[metadataKey: "quote"] = "a \"quoted\"\nvalue\u{1}"
        logger.info("hello")
        let line = try #require(captured.all.first)
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String]
        #expect(object?["msg"] == "hello")
        #expect(object?["quote"] == "a \"quoted\"\nvalue\u{1}")
        #expect(object?["level"] == "info")
    }
}
