@testable import BlockDevice
import Foundation
import Synchronization
import Testing

/// What reaches cryptsetup and how its answers are read. The whole encrypted
/// lifecycle (dm-crypt mappings) runs in the guest bed (guest/tests/test_encryption.py):
/// the kernels CI runs on may have no device-mapper, but LUKS headers need none.
struct EncryptionTests {
    static let passphrase = "correct horse battery staple\n"

    @Test func aToolReadsItsInputFromAPipeAndFindsItInNeitherArgvNorEnvironment() async throws {
        let script = "cat; printf '\\n--argv--\\n'; tr '\\0' ' ' < /proc/$$/cmdline; printf '\\n--env--\\n'; tr '\\0' '\\n' < /proc/$$/environ"
        let result = try await ProcessRunner().run("sh", ["-c", script], input: SecretBytes(Self.passphrase), timeout: 10)
        #expect(result.succeeded)
        let (input, rest) = try #require(result.output.split(separator: "\n--argv--\n", maxSplits: 1).map(String.init).pair)
        #expect(input == Self.passphrase, "every byte of the input, the trailing newline too")
        #expect(!rest.contains("battery"), "the passphrase is in the tool's argv or environment: \(rest)")
        #expect(rest.contains("--env--") && rest.contains("LC_ALL=C"))
    }

    @Test func withoutInputAToolReadsNothing() async throws {
        let result = try await ProcessRunner().run("sh", ["-c", "wc -c"], timeout: 10)
        #expect(result.output.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    }

    @Test func inputLargerThanAPipeHoldsIsRefusedBeforeTheToolStarts() async throws {
        let big = SecretBytes(String(repeating: "x", count: SecretBytes.maximumCount + 1))
        await #expect(throws: ProcessRunner.SpawnFailure.self) {
            _ = try await ProcessRunner().run("true", [], input: big, timeout: 10)
        }
    }

    @Test func aSecretPrintsAsAPlaceholder() {
        let secret = SecretBytes(Self.passphrase)
        #expect(!"\(secret)".contains("battery") && !String(reflecting: secret).contains("battery"))
    }

    @Test(arguments: [
        (2, "open", LUKS.Failure.wrongPassphrase(device: "/dev/vdb")),
        (5, "close", LUKS.Failure.busy(name: "csi-x", output: "Device csi-x is still in use.")),
    ] as [(Int32, String, LUKS.Failure)])
    func cryptsetupsExitStatusesAreReadAsItsManualSays(status: Int32, action: String, expected: LUKS.Failure) async throws {
        let luks = LUKS(runner: Answering(status: status, output: "Device csi-x is still in use."))
        await #expect(throws: expected) {
            if action == "open" {
                try await luks.open("/dev/vdb", as: "csi-x", passphrase: SecretBytes("p"), readonly: false)
            } else {
                try await luks.close("csi-x")
            }
        }
    }

    @Test func everyCallThatNeedsThePassphraseReadsItFromStandardInput() async throws {
        let recorder = Recording()
        let luks = LUKS(runner: recorder)
        let secret = SecretBytes(Self.passphrase)
        try await luks.format("/dev/vdb", passphrase: secret)
        try await luks.open("/dev/vdb", as: "csi-x", passphrase: secret, readonly: true)
        try await luks.test("/dev/vdb", passphrase: secret)
        try await luks.resize("csi-x", passphrase: secret)
        try await luks.close("csi-x")
        let calls = recorder.calls.withLock { $0 }
        #expect(calls.map(\.arguments.first) == ["luksFormat", "open", "open", "resize", "close"])
        #expect(calls[2].arguments.contains("--test-passphrase"))
        #expect(calls.map(\.input) == [Self.passphrase, Self.passphrase, Self.passphrase, Self.passphrase, nil])
        #expect(calls.allSatisfy { $0.arguments.contains("--key-file=-") || $0.input == nil })
        #expect(calls.allSatisfy { !$0.arguments.joined().contains("battery") })
        #expect(calls[1].arguments.contains("--readonly"))
    }

    /// An open mapping stands for the disk under it: a filesystem mounted from
    /// it is that disk's (its serial), and a rescan goes to that disk.
    @Test func aCryptMappingCarriesTheIdentityOfTheDiskItDecrypts() throws {
        let kernel = try scratch("kernel-sys")
        let disks = try scratch("disk-sys")
        let fm = FileManager.default
        try fm.createDirectory(atPath: disks + "/block/vdb", withIntermediateDirectories: true)
        try "csi-0123456789abcdef\n".write(toFile: disks + "/block/vdb/serial", atomically: true, encoding: .utf8)
        try "254:16\n".write(toFile: disks + "/block/vdb/dev", atomically: true, encoding: .utf8)
        try fm.createDirectory(atPath: kernel + "/block/vdb", withIntermediateDirectories: true)
        try "254:16\n".write(toFile: kernel + "/block/vdb/dev", atomically: true, encoding: .utf8)
        for (name, uuid, number) in [("dm-0", "CRYPT-LUKS2-0f1e-csi-x", "253:0"), ("dm-1", "LVM-abc", "253:1")] {
            try fm.createDirectory(atPath: kernel + "/block/\(name)/dm", withIntermediateDirectories: true)
            try fm.createDirectory(atPath: kernel + "/block/\(name)/slaves", withIntermediateDirectories: true)
            try fm.createSymbolicLink(atPath: kernel + "/block/\(name)/slaves/vdb", withDestinationPath: "../../vdb")
            try (uuid + "\n").write(toFile: kernel + "/block/\(name)/dm/uuid", atomically: true, encoding: .utf8)
            try (name == "dm-0" ? "csi-x\n" : "vg-lv\n").write(toFile: kernel + "/block/\(name)/dm/name", atomically: true, encoding: .utf8)
            try (number + "\n").write(toFile: kernel + "/block/\(name)/dev", atomically: true, encoding: .utf8)
            try fm.createDirectory(atPath: kernel + "/dev/block", withIntermediateDirectories: true)
            try fm.createSymbolicLink(atPath: kernel + "/dev/block/" + number, withDestinationPath: "../../block/" + name)
        }
        let finder = DeviceFinder(sysRoot: disks, devRoot: "/dev", mappings: CryptMappings(sysRoot: kernel))
        let mapping = try #require(finder.disk(number: "253:0"))
        #expect(mapping.devicePath == "/dev/mapper/csi-x" && mapping.name == "dm-0" && mapping.encrypts == "vdb")
        #expect(mapping.matches(serial: "csi-0123456789abcdef", wwn: nil))
        #expect(finder.disk(number: "253:1") == nil, "only crypt mappings stand for their disk")
        #expect(finder.mappings.mappings(over: "254:16").map(\.name) == ["csi-x"])
        #expect(finder.mappings.mapping(named: "vg-lv") == nil)
        // The disk found by its serial is the disk itself, never the mapping over it.
        #expect(finder.find(serial: "csi-0123456789abcdef") == "/dev/vdb")
    }
}

@Suite(.enabled(if: loopDevicesUsable && cryptsetupInstalled, "needs root, loop devices and cryptsetup"), .serialized)
struct LUKSHeaderLoopTests {
    /// A header written through the pipe opens with exactly those bytes: a key
    /// read to its end, so a passphrase without its trailing newline is another.
    @Test func aHeaderFormattedFromThePipeOpensWithExactlyThosePassphraseBytes() async throws {
        let loop = try LoopDevice(megabytes: 64)
        try await LUKS().format(loop.device, passphrase: SecretBytes(EncryptionTests.passphrase))
        let header = try BlockProbe.probe(loop.device)
        #expect(header.type == LUKS.signature && header.label == LUKS.label)
        func opens(_ passphrase: String) async throws -> Int32 {
            try await ProcessRunner().run("cryptsetup", ["open", "--test-passphrase", "--key-file=-", loop.device],
                                          input: SecretBytes(passphrase), timeout: 120).status
        }
        #expect(try await opens(EncryptionTests.passphrase) == 0)
        #expect(try await opens(String(EncryptionTests.passphrase.dropLast())) == 2, "exit 2: no key slot opens (cryptsetup(8))")
    }
}

let cryptsetupInstalled = FileManager.default.isExecutableFile(atPath: "/usr/sbin/cryptsetup")
    || FileManager.default.isExecutableFile(atPath: "/sbin/cryptsetup")

private extension Array {
    var pair: (Element, Element)? { count == 2 ? (self[0], self[1]) : nil }
}

/// Answers every tool with one exit status.
private struct Answering: CommandRunning {
    let status: Int32
    let output: String
    func run(_ tool: String, _ arguments: [String], input: SecretBytes?, timeout: Double) async throws -> CommandResult {
        CommandResult(status: status, output: output)
    }
}

/// Succeeds at everything and keeps what it was asked, input as text.
private final class Recording: CommandRunning {
    struct Call: Sendable {
        var arguments: [String]
        var input: String?
    }

    let calls = Mutex<[Call]>([])

    func run(_ tool: String, _ arguments: [String], input: SecretBytes?, timeout: Double) async throws -> CommandResult {
        calls.withLock { $0.append(Call(arguments: arguments, input: input.map { String(decoding: $0.bytes, as: UTF8.self) })) }
        return CommandResult(status: 0, output: "")
    }
}
