import BlockDevice
@testable import CSIDriver
import CSIProto
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing
import UnaryGRPC

// Node bugs a real kubelet node and a real guest kernel showed (issue 12),
// each pinned on real loop devices, mkfs and mounts. Part of the loop-device
// suite, so they run one at a time with its other tests: their tools block
// threads, and two such suites at once starve the rest of the run.
extension NodeServiceLoopTests {
    @Test func hundredsOfOtherMountsDoNotHideTheVolumesOwn() async throws {
        let node = try NodeFixture()
        // A kubelet node: every pod's secrets, config maps and tokens are tmpfs mounts.
        try sh(["sh", "-c", "for i in $(seq 0 299); do mkdir -p \(node.root)/pods-noise/$i && "
                + "mount -t tmpfs -o size=64k noise$i \(node.root)/pods-noise/$i || exit 1; done"])
        let entries = try MountTable.read()
        #expect(entries.count > 300 && entries.contains { $0.mountPoint == node.root + "/pods-noise/299" })

        let disk = try node.disk("busy-node")
        try await node.stage(disk, NodeFixture.mount("xfs"))
        try await node.publish(disk, NodeFixture.mount("xfs"))
        try "kept".write(toFile: node.target(disk) + "/data", atomically: true, encoding: .utf8)
        #expect(try await !node.stats(disk).volumeCondition.abnormal)
        try await node.unpublish(disk)
        try await node.unstage(disk)
        #expect(try node.mounted(at: node.staging(disk)) == nil)
        #expect(try MountTable.read().allSatisfy { $0.source != disk.device })
    }

    @Test func aKubeletDirectoryBehindASymlinkIsUnmountedForReal() async throws {
        let node = try NodeFixture(kubeletThroughSymlink: true)
        let disk = try node.disk("linked")
        try await node.stage(disk, NodeFixture.mount("ext4"))
        try await node.publish(disk, NodeFixture.mount("ext4"))
        try await node.stage(disk, NodeFixture.mount("ext4"))  // a retry sees its own stage
        try await node.publish(disk, NodeFixture.mount("ext4"))
        let real = MountTable.resolvingSymlinks(node.kubelet)
        #expect(real != node.kubelet)
        #expect(try MountTable.read().filter { $0.source == disk.device && $0.mountPoint.hasPrefix(real + "/") }.count == 2)
        try await node.unpublish(disk)
        try await node.unstage(disk)
        // mountinfo records resolved paths: nothing of the disk is left under the real directory.
        #expect(try MountTable.read().allSatisfy { $0.source != disk.device })
    }

    @Test func aMountedPartitionIsNotAVanishedDiskAndIsLeftMounted() async throws {
        let node = try NodeFixture()
        let mine = try node.disk("mine")
        // Another disk with a partition table, its first partition mounted where our volume stages.
        let file = node.root + "/partitioned.img"
        try sh(["truncate", "-s", "96M", file])
        try sh(["sh", "-c", "echo ',,L' | sfdisk -q \(file)"])
        let loop = try sh(["losetup", "--find", "--show", "--partscan", file])
        defer { _ = try? sh(["losetup", "-d", loop]) }
        let partition = loop + "p1"
        // partx reads the table itself, for kernels built without its parser.
        if !FileManager.default.fileExists(atPath: partition) { try sh(["partx", "-a", loop]) }
        try sh(["mkfs.ext4", "-q", partition])
        let staging = try node.staging(mine)
        try sh(["mount", partition, staging])
        // The kernel's layout: /sys/dev/block/MAJ:MIN links into the disk's directory.
        let loopName = (loop as NSString).lastPathComponent
        let number = try #require(DeviceFacts.blockDeviceNumber(partition))
        try FileManager.default.createDirectory(atPath: node.sysRoot + "/block/\(loopName)/\(loopName)p1", withIntermediateDirectories: true)
        try "1\n".write(toFile: node.sysRoot + "/block/\(loopName)/\(loopName)p1/partition", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: node.sysRoot + "/dev/block", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: node.sysRoot + "/dev/block/" + number,
                                                   withDestinationPath: "../../block/\(loopName)/\(loopName)p1")

        await expectCode(.failedPrecondition, "partition \(loopName)p1") { try await node.unstage(mine) }
        #expect(try node.mounted(at: staging)?.source == partition)
        await expectCode(.notFound, "partition") { _ = try await node.stats(mine, path: staging) }
        try sh(["umount", staging])
    }

    @Test func aShutDownXFSIsAnAbnormalConditionNotAMissingVolume() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("shutdown")
        try await node.stage(disk, NodeFixture.mount("xfs"))
        try await node.publish(disk, NodeFixture.mount("xfs"))
        try "x".write(toFile: node.target(disk) + "/data", atomically: true, encoding: .utf8)
        // What XFS does when its disk fails under a writer: every inode answers EIO.
        try sh(["xfs_io", "-x", "-c", "shutdown", node.target(disk)])
        #expect(DeviceFacts.statFailure(node.target(disk))?.code == EIO)

        let stats = try await node.stats(disk)
        #expect(stats.volumeCondition.abnormal && stats.volumeCondition.message.contains("shut down"), "\(stats.volumeCondition.message)")
        await expectCode(.failedPrecondition, "does not answer") {
            _ = try await node.service.expand(.with {
                $0.volumeID = disk.volumeID; $0.volumePath = node.target(disk); $0.stagingTargetPath = try node.staging(disk)
            })
        }
        // It can still be taken down.
        try await node.unpublish(disk)
        try await node.unstage(disk)
        #expect(try MountTable.read().allSatisfy { $0.source != disk.device })
    }

    @Test func ext4IsMountedToStopWritesOnAnError() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("ext4-errors")
        try await node.stage(disk, NodeFixture.mount("ext4"))
        #expect(try node.mounted(at: node.staging(disk))?.superOptions.contains("errors=remount-ro") == true)
        try await node.unstage(disk)
        // A StorageClass's own errors= flag wins.
        try await node.stage(disk, NodeFixture.mount("ext4", flags: ["errors=continue"]))
        let entry = try #require(try node.mounted(at: node.staging(disk)))
        #expect(entry.superOptions.contains("errors=continue") || !entry.superOptions.contains("errors=remount-ro"))
        try await node.unstage(disk)
    }

    @Test(arguments: ["ext4", "xfs"])
    func aRoMountFlagOnAReadWriteStageStaysIdempotent(fsType: String) async throws {
        let node = try NodeFixture()
        let disk = try node.disk("ro-flag-\(fsType)")
        try sh(["mkfs.\(fsType)", "-q", disk.device])  // formatted: a read-only mount formats nothing
        for _ in 0..<2 { try await node.stage(disk, NodeFixture.mount(fsType, flags: ["ro"])) }
        for _ in 0..<2 { try await node.publish(disk, NodeFixture.mount(fsType, flags: ["ro"])) }
        #expect(try node.mounted(at: node.target(disk))?.options.contains("ro") == true)
        try await node.unpublish(disk)
        try await node.unstage(disk)
    }

    @Test func aReadOnlyBlockPublishRefusesWritesToTheDevice() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("ro-block", megabytes: 64)
        let multi = Csi_V1_VolumeCapability.with { $0.block = .init(); $0.accessMode.mode = .singleNodeMultiWriter }
        try await node.publish(disk, multi, readonly: true)
        try await node.publish(disk, multi, readonly: true)  // a retry
        #expect(!Self.writes(to: node.target(disk)), "a read-only block target took a write")
        // Its disk cannot be read-write at another target of this node meanwhile.
        await expectCode(.failedPrecondition, "read-only") {
            try await node.publish(disk, multi, at: node.kubelet + "/pods/p2/volumes/ro-block")
        }
        try await node.unpublish(disk)
        // The last read-only target gone, the disk takes writes again.
        try await node.publish(disk, multi)
        #expect(Self.writes(to: node.target(disk)))
        try await node.unpublish(disk)
    }

    /// Whether one 4 KiB block can be written through `path` (O_DIRECT, past the page cache).
    static func writes(to path: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var block = [UInt8](repeating: 0x5a, count: 4096)
        return write(fd, &block, block.count) == block.count && fsync(fd) == 0
    }

    @Test func aDiskKnownOnlyByTheWWNItsPublishContextNamedIsUnstagedByARestartedPlugin() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("plugin-made")
        // As proxmox-csi-plugin attaches: a slot WWN (hex of "PVC-ID07"), no serial.
        let wwn = "0x" + Data("PVC-ID07".utf8).map { String(format: "%02x", $0) }.joined()
        try FileManager.default.removeItem(atPath: disk.sysEntry + "/serial")
        try FileManager.default.createDirectory(atPath: disk.sysEntry + "/device", withIntermediateDirectories: true)
        try ("naa." + wwn.dropFirst(2) + "\n").write(toFile: disk.sysEntry + "/device/wwid", atomically: true, encoding: .utf8)
        let staging = try node.staging(disk)
        _ = try await node.service.stage(.with {
            $0.volumeID = disk.volumeID
            $0.stagingTargetPath = staging
            $0.volumeCapability = NodeFixture.mount("ext4")
            $0.publishContext = ["wwn": wwn, "lun": "7"]
        })
        #expect(try node.mounted(at: staging)?.source == disk.device)
        // The plugin restarts: a new service over the same kubelet directory; unstage carries no publish context.
        var settings = node.service.settings
        settings.deviceWaitSeconds = 1
        let restarted = NodeService(settings: settings, volumes: nil)
        _ = try await restarted.unstage(.with { $0.volumeID = disk.volumeID; $0.stagingTargetPath = staging })
        #expect(try node.mounted(at: staging) == nil)
        #expect(NodeIdentities(directory: settings.stateDirectory).identity(of: disk.volumeID) == nil)
    }

    @Test func aRetriedReadOnlyBlockPublishRestoresTheDisksFlag() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("ro-retry", megabytes: 64)
        try await node.publish(disk, NodeFixture.block, readonly: true)
        // The first call ended between its bind and the flag (a crash, a failed ioctl).
        try DeviceFacts.setBlockDeviceReadOnly(disk.device, false)
        try await node.publish(disk, NodeFixture.block, readonly: true)
        #expect(try DeviceFacts.isBlockDeviceReadOnly(disk.device))
        #expect(!Self.writes(to: node.target(disk)))
        try await node.unpublish(disk)
    }

    @Test func aMountPastItsTimeLimitIsDeadlineExceededWhichKubeletRetries() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("slow-mount")
        let service = NodeService(settings: node.service.settings, volumes: nil, runner: StuckMount())
        await expectCode(.deadlineExceeded, "no result within") {
            _ = try await service.stage(.with {
                $0.volumeID = disk.volumeID
                $0.stagingTargetPath = try node.staging(disk)
                $0.volumeCapability = NodeFixture.mount("xfs")
            })
        }
    }

    @Test func anIdentityThatCannotBeWrittenFailsEveryStageUntilItCan() throws {
        let root = try temporaryDirectory("identities")
        try Data().write(to: URL(fileURLWithPath: root + "/file"))
        let identities = NodeIdentities(directory: root + "/file/staged-volumes")  // under a file: never writable
        let identity = NodeIdentities.Identity(volumeID: "sim//ceph/vm-9999-x", serial: "csi-x", wwn: nil)
        for _ in 0..<2 { #expect(throws: RPCError.self) { try identities.record(identity) } }
        #expect(identities.identity(of: identity.volumeID) == nil)
    }
}

/// Runs every tool for real but mount, which is killed past its limit (a mount stuck on a dying disk).
struct StuckMount: CommandRunning {
    func run(_ tool: String, _ arguments: [String], input: SecretBytes?, timeout: Double) async throws -> CommandResult {
        guard tool == "mount" else { return try await ProcessRunner().run(tool, arguments, input: input, timeout: timeout) }
        return try await ProcessRunner().run("sleep", ["60"], timeout: 0.3)
    }
}
