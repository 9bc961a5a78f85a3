@testable import BlockDevice
import Foundation
import Testing

/// A loop device over a sparse file, detached at the end.
final class LoopDevice {
    let file: String
    let device: String

    init(megabytes: Int64) throws {
        file = try scratch("loop") + "/disk.img"
        try sparseFile(file, bytes: megabytes << 20)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["losetup", "--find", "--show", file]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        device = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        process.waitUntilExit()
        guard process.terminationStatus == 0, device.hasPrefix("/dev/loop") else { throw ProbeSetupError(command: "losetup") }
    }

    deinit {
        try? shell(["losetup", "-d", device])
        try? FileManager.default.removeItem(atPath: file)
    }
}

let loopDevicesUsable: Bool = getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control")

@Suite(.enabled(if: loopDevicesUsable, "needs root and loop devices"), .serialized)
struct LoopDeviceTests {
    let format = SafeFormat()
    let mounter = Mounter()

    func withMount<T>(_ device: String, fsType: String, _ body: (String) throws -> T) async throws -> T {
        let target = try scratch("mnt")
        try await mounter.mount(device, at: target, fsType: fsType, options: fsType == "xfs" ? ["nouuid"] : [])
        defer { try? Unmounter.unmountAndRemove(target) }
        return try body(target)
    }

    @Test(arguments: ["xfs", "ext4"])
    func blankIsFormattedAndDataSurvivesAStageCycle(fsType: String) async throws {
        let loop = try LoopDevice(megabytes: 320)
        #expect(try await format.ensureFilesystem(loop.device, fsType: fsType))
        try await withMount(loop.device, fsType: fsType) { target in
            try "precious".write(toFile: target + "/data.txt", atomically: true, encoding: .utf8)
        }
        // Formatted already: left as it is, data intact.
        #expect(try await !format.ensureFilesystem(loop.device, fsType: fsType))
        let text = try await withMount(loop.device, fsType: fsType) { target in
            try String(contentsOfFile: target + "/data.txt", encoding: .utf8)
        }
        #expect(text == "precious")
    }

    @Test func anotherFilesystemIsRefusedAndKept() async throws {
        let loop = try LoopDevice(megabytes: 320)
        try shell(["mkfs.ext4", "-q", loop.device])
        try await withMount(loop.device, fsType: "ext4") { target in
            try "ext4 data".write(toFile: target + "/keep.txt", atomically: true, encoding: .utf8)
        }
        await #expect(throws: SafeFormat.Failure.holdsData(device: loop.device, found: "a ext4 filesystem", wanted: "xfs")) {
            try await format.ensureFilesystem(loop.device, fsType: "xfs")
        }
        let text = try await withMount(loop.device, fsType: "ext4") { try String(contentsOfFile: $0 + "/keep.txt", encoding: .utf8) }
        #expect(text == "ext4 data")
    }

    /// A ZFS pool member (its four labels' uberblocks, as libblkid 2.38 looks for them) is
    /// refused for either filesystem and left byte for byte, though the probe skips
    /// libblkid's ZFS prober on disks whose label areas are zero (ZFSLabels); mkfs.ext4
    /// alone would format it.
    @Test(arguments: ["xfs", "ext4"])
    func aZFSMemberIsNeverFormatted(fsType: String) async throws {
        let bytes: Int64 = 64 << 20
        let loop = try LoopDevice(megabytes: bytes >> 20)
        try writeZFSUberblocks(loop.device, deviceBytes: bytes)
        #expect(try BlockProbe.probe(loop.device).type == "zfs_member")
        let before = try Data(contentsOf: URL(fileURLWithPath: loop.file))
        await #expect(throws: SafeFormat.Failure.holdsData(device: loop.device, found: "a zfs_member filesystem", wanted: fsType)) {
            try await format.ensureFilesystem(loop.device, fsType: fsType)
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: loop.file)) == before)  // (the loop device writes through to its file)
    }

    @Test func aPartitionTableIsRefused() async throws {
        let loop = try LoopDevice(megabytes: 64)
        let layout = try scratch("layout") + "/gpt"
        try "label: gpt\n,,L\n".write(toFile: layout, atomically: true, encoding: .utf8)
        try shell(["sh", "-c", "sfdisk --quiet \(loop.device) < \(layout)"])
        await #expect(throws: SafeFormat.Failure.self) { try await format.ensureFilesystem(loop.device, fsType: "ext4") }
        #expect(try BlockProbe.probe(loop.device).partitionTable == "gpt")
    }

    @Test func mkfsOptionsReachTheFilesystem() async throws {
        let loop = try LoopDevice(megabytes: 320)
        try await format.ensureFilesystem(loop.device, fsType: "ext4", blockSize: 1024, inodeSize: 512)
        let result = try await ProcessRunner().run("dumpe2fs", ["-h", loop.device], timeout: 30)
        #expect(result.output.contains("Block size:               1024"))
        #expect(result.output.contains("Inode size:\t          512"))
    }

    @Test func readOnlyBindMountRefusesWrites() async throws {
        let source = try scratch("bind-src")
        let target = try scratch("bind-dst")
        try await mounter.bind(source, at: target, readonly: true)
        defer { try? Unmounter.unmountAndRemove(target) }
        #expect(!FileManager.default.createFile(atPath: target + "/nope", contents: Data("x".utf8)))
        #expect(try MountTable.mount(at: target, in: MountTable.read())?.options.contains("ro") == true)
    }
}

/// 128 uberblocks (magic 0x00bab10c, little-endian) in each of the four ZFS labels:
/// two at the start of the device, two at its end, 256 KiB each, uberblocks from 128 KiB in.
func writeZFSUberblocks(_ device: String, deviceBytes: Int64) throws {
    guard let handle = FileHandle(forWritingAtPath: device) else { throw ProbeSetupError(command: "open \(device)") }
    defer { try? handle.close() }
    let label: Int64 = 256 << 10
    for start in [0, label, deviceBytes - 2 * label, deviceBytes - label] {
        for index in 0..<Int64(128) {
            var block = Data(count: 24)
            block.withUnsafeMutableBytes { raw in
                raw.storeBytes(of: UInt64(0x00ba_b10c).littleEndian, toByteOffset: 0, as: UInt64.self)
                raw.storeBytes(of: UInt64(5000).littleEndian, toByteOffset: 8, as: UInt64.self)  // ub_version
                raw.storeBytes(of: UInt64(1000 + index).littleEndian, toByteOffset: 16, as: UInt64.self)  // ub_txg
            }
            try handle.seek(toOffset: UInt64(start + (128 << 10) + index * 1024))
            handle.write(block)
        }
    }
    try handle.synchronize()
}
