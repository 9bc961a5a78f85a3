import CSIProto
import Foundation
import Testing

/// The repository root, found from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite struct ProtoDriftTests {
    @Test func generatedCodeWasMadeFromTheCommittedProto() throws {
        let proto = repositoryRoot.appendingPathComponent("proto/csi.proto").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        process.arguments = [proto]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        process.waitUntilExit()
        let line = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let digest = String(line.prefix { $0 != " " })
        #expect(digest.count == 64)
        #expect(digest == csiProtoSourceSHA256,
                "proto/csi.proto changed since Sources/CSIProto was generated: run scripts/generate-proto")
    }

    @Test func messagesCarryTheSpecsWireNames() throws {
        // Names and field numbers travel on the wire and in method paths.
        #expect(Csi_V1_CreateVolumeRequest.protoMessageName == "csi.v1.CreateVolumeRequest")
        let request = Csi_V1_NodeStageVolumeRequest.with { $0.stagingTargetPath = "/x" }
        // staging_target_path is field 3, a length-delimited string: tag 0x1A.
        #expect(try request.serializedBytes() as [UInt8] == [0x1A, 0x02, 0x2F, 0x78])
    }
}
