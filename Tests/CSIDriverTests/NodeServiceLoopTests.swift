import BlockDevice
@testable import CSIDriver
import FakeProxmox
@testable import ProxmoxDomain
import CSIProto
import Foundation
import ProxmoxAPI
import Testing
import UnaryGRPC

// The Node service on real loop devices, real mkfs and real mounts. Each
// disk is described in a private sysfs tree the way a hot-plugged virtio
// disk appears in the guest (serial file, dev number), so the service finds
// it exactly as it finds one on a Proxmox VM.

@discardableResult
func sh(_ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw CommandFailed(command: arguments.joined(separator: " "), output: output) }
    return output.trimmingCharacters(in: .whitespacesAndNewlines)
}

struct CommandFailed: Error { let command: String; let output: String }

func temporaryDirectory(_ name: String) throws -> String {
    let path = NSTemporaryDirectory() + "node-\(name)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A loop device that stands for a Proxmox disk hot-plugged into this VM.
final class AttachedDisk {
    let volumeID: String
    let file: String
    let device: String
    let sysEntry: String

    /// `wwn`: the disk carries that SCSI WWN and no serial, as one proxmox-csi-plugin attached.
    init(_ volumeID: String, megabytes: Int64, sysRoot: String, scratch: String, wwn: String? = nil) throws {
        self.volumeID = volumeID
        file = scratch + "/" + UUID().uuidString + ".img"
        _ = FileManager.default.createFile(atPath: file, contents: nil)
        try sh(["truncate", "-s", "\(megabytes)M", file])
        device = try sh(["losetup", "--find", "--show", file])
        let name = (device as NSString).lastPathComponent
        sysEntry = sysRoot + "/block/" + name
        try FileManager.default.createDirectory(atPath: sysEntry, withIntermediateDirectories: true)
        if let wwn {
            try FileManager.default.createDirectory(atPath: sysEntry + "/device", withIntermediateDirectories: true)
            try ("naa." + wwn.dropFirst(2) + "\n").write(toFile: sysEntry + "/device/wwid", atomically: true, encoding: .utf8)
        } else {
            let serial = VolumeNaming.serial(for: try VolumeHandle(parsing: volumeID))
            try (serial + "\n").write(toFile: sysEntry + "/serial", atomically: true, encoding: .utf8)
        }
        try String(contentsOfFile: "/sys/block/\(name)/dev", encoding: .utf8).write(toFile: sysEntry + "/dev", atomically: true, encoding: .utf8)
    }

    /// What Proxmox's resize does to the disk under a running guest.
    func grow(toMegabytes megabytes: Int64) throws {
        try sh(["truncate", "-s", "\(megabytes)M", file])
        try sh(["losetup", "-c", device])
    }

    /// The guest no longer lists the disk (detached under its feet).
    func vanish() throws {
        try FileManager.default.removeItem(atPath: sysEntry)
    }

    deinit {
        _ = try? sh(["losetup", "-d", device])
        try? FileManager.default.removeItem(atPath: file)
    }
}

/// A node service whose kubelet directory, sysfs and disks are private to one test.
final class NodeFixture {
    let root: String
    let kubelet: String
    let sysRoot: String
    let service: NodeService

    /// `kubeletThroughSymlink`: the kubelet directory is a symbolic link to the real one, as on nodes
    /// that keep /var/lib/kubelet on another disk.
    /// `volumes`: the node asks Proxmox (a fake cluster) about its VM, as one with a config does.
    init(kubeletThroughSymlink: Bool = false, volumes: ProxmoxVolumes? = nil) throws {
        root = try temporaryDirectory("fixture")
        kubelet = root + "/kubelet"
        sysRoot = root + "/sys"
        if kubeletThroughSymlink {
            try FileManager.default.createDirectory(atPath: root + "/data/kubelet", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: kubelet, withDestinationPath: root + "/data/kubelet")
        }
        try FileManager.default.createDirectory(atPath: kubelet + "/plugins", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: sysRoot + "/block", withIntermediateDirectories: true)
        var settings = NodeSettings(nodeName: "k8s-node-1")
        settings.sysRoot = sysRoot
        settings.allowedRoots = [kubelet]
        settings.deviceWaitSeconds = 1
        settings.stateDirectory = root + "/kubelet-state/staged-volumes"
        service = NodeService(settings: settings, volumes: volumes)
    }

    func disk(_ name: String, megabytes: Int64 = 320, wwn: String? = nil) throws -> AttachedDisk {
        try AttachedDisk("sim//ceph/vm-9999-\(name)", megabytes: megabytes, sysRoot: sysRoot, scratch: root, wwn: wwn)
    }

    func staging(_ disk: AttachedDisk) throws -> String {
        let path = kubelet + "/plugins/staging/" + (disk.volumeID as NSString).lastPathComponent
        // Only when missing: a shut-down filesystem mounted there answers stat with EIO.
        if DeviceFacts.isMissing(path) { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
        return path
    }

    func target(_ disk: AttachedDisk) -> String {
        kubelet + "/pods/p1/volumes/" + (disk.volumeID as NSString).lastPathComponent
    }

    static func mount(_ fsType: String, mode: Csi_V1_VolumeCapability.AccessMode.Mode = .singleNodeWriter,
                      flags: [String] = []) -> Csi_V1_VolumeCapability {
        .with {
            $0.mount = .with { $0.fsType = fsType; $0.mountFlags = flags }
            $0.accessMode.mode = mode
        }
    }

    static let block = Csi_V1_VolumeCapability.with {
        $0.block = .init()
        $0.accessMode.mode = .singleNodeWriter
    }

    func stage(_ disk: AttachedDisk, _ capability: Csi_V1_VolumeCapability, context: [String: String] = [:],
               publishContext: [String: String] = [:]) async throws {
        _ = try await service.stage(.with {
            $0.volumeID = disk.volumeID
            $0.stagingTargetPath = try staging(disk)
            $0.volumeCapability = capability
            $0.volumeContext = context
            $0.publishContext = publishContext
        })
    }

    func stageEncrypted(_ disk: AttachedDisk, _ capability: Csi_V1_VolumeCapability, passphrase: String) async throws {
        _ = try await service.stage(.with {
            $0.volumeID = disk.volumeID
            $0.stagingTargetPath = try staging(disk)
            $0.volumeCapability = capability
            $0.secrets = ["encryption-passphrase": passphrase]
        })
    }

    func unstage(_ disk: AttachedDisk) async throws {
        _ = try await service.unstage(.with { $0.volumeID = disk.volumeID; $0.stagingTargetPath = try staging(disk) })
    }

    func publish(_ disk: AttachedDisk, _ capability: Csi_V1_VolumeCapability, readonly: Bool = false, at path: String? = nil) async throws {
        _ = try await service.publish(.with {
            $0.volumeID = disk.volumeID
            $0.stagingTargetPath = try staging(disk)
            $0.targetPath = path ?? target(disk)
            $0.volumeCapability = capability
            $0.readonly = readonly
        })
    }

    func unpublish(_ disk: AttachedDisk, volumeID: String? = nil) async throws {
        _ = try await service.unpublish(.with { $0.volumeID = volumeID ?? disk.volumeID; $0.targetPath = target(disk) })
    }

    func stats(_ disk: AttachedDisk, path: String? = nil) async throws -> Csi_V1_NodeGetVolumeStatsResponse {
        try await service.volumeStats(.with { $0.volumeID = disk.volumeID; $0.volumePath = path ?? target(disk) }).value()
    }

    func mounted(at path: String) throws -> MountEntry? {
        MountTable.mount(at: path, in: try MountTable.read())
    }

    deinit {
        // Undo whatever a failed test left mounted before removing anything.
        let entries = (try? MountTable.read()) ?? []
        for entry in entries.reversed() where entry.mountPoint.hasPrefix(root + "/") {
            _ = try? sh(["umount", "-l", entry.mountPoint])
        }
        try? FileManager.default.removeItem(atPath: root)
    }
}

func expectCode(_ code: StatusCode, _ fragment: String? = nil, _ body: () async throws -> Void,
                sourceLocation: SourceLocation = #_sourceLocation) async {
    do {
        try await body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
    } catch let error as RPCError {
        #expect(error.code == code, "\(error.message)", sourceLocation: sourceLocation)
        if let fragment { #expect(error.message.contains(fragment), "\(error.message)", sourceLocation: sourceLocation) }
    } catch {
        Issue.record("expected RPCError \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

/// Whether this process holds capability number `bit` (CapEff in /proc/self/status).
func hasCapability(_ bit: Int) -> Bool {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
          let mask = UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16) else { return false }
    return mask & (1 << UInt64(bit)) != 0
}

let loopDevicesUsable: Bool = getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control")

@Suite(.enabled(if: loopDevicesUsable, "needs root and loop devices (real mkfs and mount)"), .serialized)
struct NodeServiceLoopTests {
    @Test(arguments: ["xfs", "ext4"])
    func blankDiskIsFormattedAndDataSurvivesStageCycles(fsType: String) async throws {
        let node = try NodeFixture()
        let disk = try node.disk("blank-\(fsType)")
        try await node.stage(disk, NodeFixture.mount(fsType))
        let staged = try #require(try node.mounted(at: node.staging(disk)))
        #expect(staged.fsType == fsType && staged.source == disk.device)
        if fsType == "xfs" { #expect(staged.superOptions.contains("nouuid")) }

        try await node.publish(disk, NodeFixture.mount(fsType))
        try "precious".write(toFile: node.target(disk) + "/data.txt", atomically: true, encoding: .utf8)
        try await node.unpublish(disk)
        #expect(!FileManager.default.fileExists(atPath: node.target(disk)))
        try await node.unstage(disk)
        #expect(try node.mounted(at: node.staging(disk)) == nil)

        // Second and third cycles find the filesystem and keep the data.
        for _ in 0..<2 {
            try await node.stage(disk, NodeFixture.mount(fsType))
            try await node.publish(disk, NodeFixture.mount(fsType))
            #expect(try String(contentsOfFile: node.target(disk) + "/data.txt", encoding: .utf8) == "precious")
            try await node.unpublish(disk)
            try await node.unstage(disk)
        }
    }

    @Test func stageAndPublishAreIdempotent() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("idem")
        for _ in 0..<3 { try await node.stage(disk, NodeFixture.mount("ext4")) }
        for _ in 0..<3 { try await node.publish(disk, NodeFixture.mount("ext4")) }
        let entries = try MountTable.read()
        #expect(entries.filter { $0.mountPoint == (try? node.staging(disk)) }.count == 1)
        #expect(entries.filter { $0.mountPoint == node.target(disk) }.count == 1)
        for _ in 0..<2 { try await node.unpublish(disk) }
        for _ in 0..<2 { try await node.unstage(disk) }
    }

    @Test func concurrentStagesOfOneVolumeFormatOnce() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("race")
        let request = try Csi_V1_NodeStageVolumeRequest.with {
            $0.volumeID = disk.volumeID
            $0.stagingTargetPath = try node.staging(disk)
            $0.volumeCapability = NodeFixture.mount("xfs")
        }
        let service = node.service
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<4 { group.addTask { _ = try await service.stage(request) } }
            try await group.waitForAll()
        }
        #expect(try MountTable.read().filter { $0.mountPoint == (try? node.staging(disk)) }.count == 1)
        try await node.unstage(disk)
    }

    @Test func aFormattedDiskKeepsItsData() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("formatted")
        try sh(["mkfs.ext4", "-q", "-L", "mine", disk.device])
        let scratchMount = try temporaryDirectory("premount")
        try sh(["mount", disk.device, scratchMount])
        try "kept".write(toFile: scratchMount + "/old.txt", atomically: true, encoding: .utf8)
        try sh(["umount", scratchMount])

        try await node.stage(disk, NodeFixture.mount("ext4"))
        #expect(try String(contentsOfFile: node.staging(disk) + "/old.txt", encoding: .utf8) == "kept")
        #expect(try sh(["blkid", "-o", "value", "-s", "LABEL", disk.device]) == "mine")
        try await node.unstage(disk)
    }

    @Test func anotherFilesystemIsRefusedUntouched() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("other-fs")
        try sh(["mkfs.xfs", "-q", "-L", "theirs", disk.device])
        await expectCode(.failedPrecondition, "holds a xfs filesystem") {
            try await node.stage(disk, NodeFixture.mount("ext4"))
        }
        #expect(try node.mounted(at: node.staging(disk)) == nil)
        #expect(try sh(["blkid", "-o", "value", "-s", "LABEL", disk.device]) == "theirs")
    }

    @Test func aPartitionTableIsRefusedUntouched() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("gpt", megabytes: 64)
        try sh(["sh", "-c", "printf 'label: gpt\\n,,L\\n' | sfdisk --quiet \(disk.device)"])
        await expectCode(.failedPrecondition, "gpt partition table") {
            try await node.stage(disk, NodeFixture.mount("xfs"))
        }
        #expect(try BlockProbe.probe(disk.device).partitionTable == "gpt")
    }

    @Test func aBlankDiskIsNotFormattedForAReader() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("blank-ro")
        await expectCode(.failedPrecondition, "is blank") {
            try await node.stage(disk, NodeFixture.mount("ext4", mode: .singleNodeReaderOnly))
        }
        #expect(try BlockProbe.probe(disk.device).isBlank)
    }

    @Test func mkfsOptionsComeFromTheStorageClass() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("mkfs-options")
        try await node.stage(disk, NodeFixture.mount("ext4"), context: ["blockSize": "1024", "inodeSize": "512"])
        let header = try sh(["dumpe2fs", "-h", disk.device])
        #expect(header.contains("Block size:               1024"))
        #expect(header.contains("Inode size:\t          512"))
        try await node.unstage(disk)
    }

    @Test func readOnlyPublishRefusesWritesAndAMismatchIsAlreadyExists() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("ro")
        try await node.stage(disk, NodeFixture.mount("xfs"))
        try await node.publish(disk, NodeFixture.mount("xfs"), readonly: true)
        #expect(!FileManager.default.createFile(atPath: node.target(disk) + "/nope", contents: Data("x".utf8)))
        await expectCode(.alreadyExists, "read-only") { try await node.publish(disk, NodeFixture.mount("xfs")) }
        await expectCode(.alreadyExists) { try await node.publish(disk, NodeFixture.block) }
        try await node.unpublish(disk)
        try await node.unstage(disk)
    }

    @Test func blockAccessBindsTheDeviceOntoAFile() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("block", megabytes: 64)
        try await node.stage(disk, NodeFixture.block)
        #expect(try node.mounted(at: node.staging(disk)) == nil)
        try await node.publish(disk, NodeFixture.block)
        try await node.publish(disk, NodeFixture.block)
        let target = node.target(disk)
        #expect(DeviceFacts.blockDeviceNumber(target) == DeviceFacts.blockDeviceNumber(disk.device))
        try sh(["dd", "if=/dev/zero", "of=\(target)", "bs=4096", "count=1", "oflag=direct", "status=none"])

        let stats = try await node.stats(disk)
        #expect(stats.usage.first?.total == 64 << 20 && stats.usage.first?.unit == .bytes)
        #expect(!stats.volumeCondition.abnormal)
        await expectCode(.alreadyExists) { try await node.publish(disk, NodeFixture.mount("ext4")) }
        #expect(try await node.service.expand(.with { $0.volumeID = disk.volumeID; $0.volumePath = target }).capacityBytes == 64 << 20)

        try await node.unpublish(disk)
        #expect(!FileManager.default.fileExists(atPath: target))
        try await node.unstage(disk)
        // Nothing was formatted: the block volume is the application's.
        #expect(try BlockProbe.probe(disk.device).isBlank)
    }

    @Test func growsXFSOnlineAfterTheDiskGrows() async throws {
        try await growsOnlineAfterTheDiskGrows(fsType: "xfs")
    }

    /// ext4 grows online through an ioctl that needs CAP_SYS_RESOURCE; the
    /// node plugin (privileged) has it, a restricted root may not.
    @Test(.enabled(if: hasCapability(24), "ext4 online resize needs CAP_SYS_RESOURCE, which this root lacks"))
    func growsExt4OnlineAfterTheDiskGrows() async throws {
        try await growsOnlineAfterTheDiskGrows(fsType: "ext4")
    }

    func growsOnlineAfterTheDiskGrows(fsType: String) async throws {
        let node = try NodeFixture()
        let disk = try node.disk("grow-\(fsType)", megabytes: 320)
        try await node.stage(disk, NodeFixture.mount(fsType))
        try await node.publish(disk, NodeFixture.mount(fsType))
        try "before".write(toFile: node.target(disk) + "/a.txt", atomically: true, encoding: .utf8)
        let before = try DeviceFacts.usage(at: node.target(disk)).totalBytes

        try disk.grow(toMegabytes: 640)
        let response = try await node.service.expand(.with {
            $0.volumeID = disk.volumeID
            $0.volumePath = node.target(disk)
            $0.stagingTargetPath = try node.staging(disk)
            $0.capacityRange.requiredBytes = 640 << 20
        })
        #expect(response.capacityBytes == 640 << 20)
        let after = try DeviceFacts.usage(at: node.target(disk)).totalBytes
        #expect(after > before + (250 << 20), "filesystem grew from \(before) to \(after)")
        #expect(try String(contentsOfFile: node.target(disk) + "/a.txt", encoding: .utf8) == "before")

        // Asking for more than the disk has is refused, not faked.
        await expectCode(.failedPrecondition, "less than") {
            _ = try await node.service.expand(.with {
                $0.volumeID = disk.volumeID
                $0.volumePath = node.target(disk)
                $0.capacityRange.requiredBytes = 1 << 30
            })
        }
        try await node.unpublish(disk)
        try await node.unstage(disk)
    }

    /// A volume proxmox-csi-plugin restored smaller than asked: its publish grew the
    /// disk and set `resizeRequired`, so the stage grows the filesystem; without it, a stage leaves the size alone.
    @Test func aStageTheControllerMarkedResizeRequiredGrowsTheFilesystem() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("owed", megabytes: 320)
        try await node.stage(disk, NodeFixture.mount("xfs"))
        try "restored".write(toFile: node.staging(disk) + "/a.txt", atomically: true, encoding: .utf8)
        let before = try DeviceFacts.usage(at: node.staging(disk)).totalBytes
        try await node.unstage(disk)

        try disk.grow(toMegabytes: 640)
        try await node.stage(disk, NodeFixture.mount("xfs"))
        #expect(try DeviceFacts.usage(at: node.staging(disk)).totalBytes == before)
        try await node.unstage(disk)

        try await node.stage(disk, NodeFixture.mount("xfs"), publishContext: ["resizeRequired": "true"])
        let after = try DeviceFacts.usage(at: node.staging(disk)).totalBytes
        #expect(after > before + (250 << 20), "filesystem grew from \(before) to \(after)")
        #expect(try String(contentsOfFile: node.staging(disk) + "/a.txt", encoding: .utf8) == "restored")
        try await node.unstage(disk)
    }

    /// A pod's volume that proxmox-csi-plugin staged and published before the switch: no identity
    /// was recorded here and its disk has the plugin's slot WWN, not our serial. Its stats, growth,
    /// unpublish and unstage find it by the line in this VM's config, which Proxmox holds.
    @Test func aVolumeThePluginStagedBeforeTheSwitchIsServedAndCleanedUp() async throws {
        let wwn = "0x5056432d49443037"  // hex("PVC-ID07"): the plugin's scsi7
        let fake = FakeCluster()
        fake.addStorage("ceph", type: "rbd", shared: true, capacity: 100 << 30)
        fake.addVM(100, node: "pve1", name: "k8s-node-1", config: ["scsi0": "ceph:vm-100-disk-0,size=8G",
                                                                   "scsi7": "ceph:vm-9999-pvc-p,backup=0,iothread=1,wwn=\(wwn)"])
        let volumes = ProxmoxVolumes(clusters: [("sim", fake)], ownerVMID: 9999, taskTimeout: 5, cacheSeconds: 0, scanSeconds: 0)
        let node = try NodeFixture(volumes: volumes)
        let disk = try node.disk("pvc-p", wwn: wwn)
        // What the plugin's NodeStage and NodePublish left: xfs, mounted at the staging path, bound into the pod.
        try sh(["mkfs.xfs", "-q", disk.device])
        try sh(["mount", disk.device, node.staging(disk)])
        try FileManager.default.createDirectory(atPath: node.target(disk), withIntermediateDirectories: true)
        try sh(["mount", "--bind", node.staging(disk), node.target(disk)])
        try "from the plugin's time".write(toFile: node.target(disk) + "/a.txt", atomically: true, encoding: .utf8)

        let stats = try await node.stats(disk)
        #expect(!stats.volumeCondition.abnormal, "\(stats.volumeCondition.message)")
        try disk.grow(toMegabytes: 640)
        _ = try await node.service.expand(.with {
            $0.volumeID = disk.volumeID
            $0.volumePath = node.target(disk)
            $0.stagingTargetPath = try node.staging(disk)
            $0.capacityRange.requiredBytes = 640 << 20
        })
        #expect(try DeviceFacts.usage(at: node.target(disk)).totalBytes > 500 << 20)
        try await node.unpublish(disk)
        try await node.unstage(disk)
        #expect(try node.mounted(at: node.staging(disk)) == nil)
        #expect(fake.count(.config) >= 1, "the identity came from the VM's config")

        // Staged again by this driver (its publish context carries the WWN): the data is there, never reformatted.
        _ = try await node.service.stage(.with {
            $0.volumeID = disk.volumeID
            $0.stagingTargetPath = try node.staging(disk)
            $0.volumeCapability = NodeFixture.mount("xfs")
            $0.publishContext = ["wwn": wwn, "bus": "scsi", "lun": "7"]
        })
        #expect(try String(contentsOfFile: node.staging(disk) + "/a.txt", encoding: .utf8) == "from the plugin's time")
        try await node.unstage(disk)
    }

    /// An encrypted class (a passphrase in the node-stage secret) never encrypts a disk that holds data.
    @Test func aDiskHoldingAFilesystemInTheClearIsNeverEncrypted() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("pvc-clear")
        try sh(["mkfs.ext4", "-q", "-L", "theirs", disk.device])
        let before = try sh(["blkid", "-p", disk.device])
        await expectCode(.failedPrecondition, "in the clear") {
            try await node.stageEncrypted(disk, NodeFixture.mount("xfs"), passphrase: "s3cret")
        }
        #expect(try sh(["blkid", "-p", disk.device]) == before)
        #expect(try node.mounted(at: node.staging(disk)) == nil)
    }

    /// A LUKS disk staged without its passphrase is neither formatted nor mounted in the clear.
    @Test(.enabled(if: cryptsetupInstalled, "needs cryptsetup"))
    func aLUKSDiskStagedWithoutItsPassphraseIsRefusedAndKept() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("pvc-locked")
        try await LUKS().format(disk.device, passphrase: SecretBytes("s3cret"))
        let before = try sh(["blkid", "-p", disk.device])
        await expectCode(.failedPrecondition, "encryption-passphrase") { try await node.stage(disk, NodeFixture.mount("ext4")) }
        #expect(try sh(["blkid", "-p", disk.device]) == before)
        await expectCode(.invalidArgument, "secrets[encryption-passphrase] is empty") {
            try await node.stageEncrypted(disk, NodeFixture.mount("ext4"), passphrase: "")
        }
        #expect(try sh(["blkid", "-p", disk.device]) == before)
    }

    /// A raw block volume this driver encrypted (its LUKS2 label) is not staged without its
    /// passphrase: the pod would get ciphertext. A pod's own LUKS (no such label) is its business.
    @Test(.enabled(if: cryptsetupInstalled, "needs cryptsetup"))
    func aBlockStageWithoutThePassphraseRefusesThisDriversLUKSButNotAPodsOwn() async throws {
        let node = try NodeFixture()
        let ours = try node.disk("pvc-ours")
        try await LUKS().format(ours.device, passphrase: SecretBytes("s3cret"))
        await expectCode(.failedPrecondition, "encryption-passphrase") { try await node.stage(ours, NodeFixture.block) }
        let theirs = try node.disk("pvc-theirs")
        try sh(["sh", "-c", "printf s3cret | cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 "
            + "--pbkdf-force-iterations 1000 --key-file=- \(theirs.device)"])
        try await node.stage(theirs, NodeFixture.block)
    }

    /// Without Proxmox to ask, such a mount is not recognised as the volume's, and is left mounted.
    @Test func withoutProxmoxAPluginStagedMountIsLeftAlone() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("pvc-q", wwn: "0x5056432d49443038")
        try sh(["mkfs.xfs", "-q", disk.device])
        try sh(["mount", disk.device, node.staging(disk)])
        await expectCode(.failedPrecondition, "not this volume's disk") { try await node.unstage(disk) }
        #expect(try node.mounted(at: node.staging(disk)) != nil)
        try sh(["umount", node.staging(disk)])
    }

    @Test func statsReportUsageAndAbnormalConditions() async throws {
        let node = try NodeFixture()
        let disk = try node.disk("stats")
        try await node.stage(disk, NodeFixture.mount("ext4", flags: ["errors=remount-ro"]))
        try await node.publish(disk, NodeFixture.mount("ext4"))
        try Data(count: 8 << 20).write(to: URL(fileURLWithPath: node.target(disk) + "/fill"))

        let healthy = try await node.stats(disk)
        let bytes = try #require(healthy.usage.first { $0.unit == .bytes })
        let inodes = try #require(healthy.usage.first { $0.unit == .inodes })
        #expect(bytes.total > 250 << 20 && bytes.used >= 8 << 20 && bytes.available < bytes.total)
        #expect(inodes.total > 0 && inodes.used > 0)
        #expect(!healthy.volumeCondition.abnormal)

        // The kernel turns ext4 read-only on an error (errors=remount-ro).
        let name = (disk.device as NSString).lastPathComponent
        try "1".write(toFile: "/sys/fs/ext4/\(name)/trigger_fs_error", atomically: false, encoding: .utf8)
        let readOnly = try await node.stats(disk)
        #expect(readOnly.volumeCondition.abnormal && readOnly.volumeCondition.message.contains("read-only"))

        // The disk leaves the VM: a stale mount.
        try disk.vanish()
        let vanished = try await node.stats(disk)
        #expect(vanished.volumeCondition.abnormal && vanished.volumeCondition.message.contains("gone"))

        // The mount is gone.
        try sh(["umount", node.target(disk)])
        let unmounted = try await node.stats(disk)
        #expect(unmounted.volumeCondition.abnormal && unmounted.volumeCondition.message.contains("nothing is mounted"))
    }

    @Test func unpublishAndUnstageNeverUnmountAnotherDisk() async throws {
        let node = try NodeFixture()
        let mine = try node.disk("mine")
        let other = try node.disk("other")
        try await node.stage(mine, NodeFixture.mount("ext4"))
        try await node.publish(mine, NodeFixture.mount("ext4"))
        await expectCode(.failedPrecondition, "not this volume's disk") {
            try await node.unpublish(mine, volumeID: other.volumeID)
        }
        await expectCode(.failedPrecondition, "not this volume's disk") {
            _ = try await node.service.unstage(.with { $0.volumeID = other.volumeID; $0.stagingTargetPath = try node.staging(mine) })
        }
        #expect(try node.mounted(at: node.target(mine)) != nil)
        #expect(try node.mounted(at: node.staging(mine)) != nil)
        // Stats for the other volume at this path: not found there.
        await expectCode(.notFound) { _ = try await node.stats(other, path: node.target(mine)) }

        // A tmpfs someone mounted at a target is not a volume either.
        let foreign = node.kubelet + "/pods/p1/volumes/tmp"
        try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
        try sh(["mount", "-t", "tmpfs", "tmpfs", foreign])
        await expectCode(.failedPrecondition) {
            _ = try await node.service.unpublish(.with { $0.volumeID = mine.volumeID; $0.targetPath = foreign })
        }
        try sh(["umount", foreign])

        try await node.unpublish(mine)
        try await node.unstage(mine)
        // Missing paths are done already.
        try await node.unpublish(mine)
        try await node.unstage(mine)
    }

    @Test func aDiskThatNeverAppearsIsNotFound() async throws {
        let node = try NodeFixture()
        await expectCode(.notFound, "is the volume attached") {
            _ = try await node.service.stage(.with {
                $0.volumeID = "sim//ceph/vm-9999-absent"
                $0.stagingTargetPath = node.kubelet + "/plugins/staging/absent"
                $0.volumeCapability = NodeFixture.mount("ext4")
            })
        }
    }
}

/// Request checks that need no disk.
@Suite struct NodeRequestTests {
    let node: NodeFixture

    init() throws { node = try NodeFixture() }

    @Test func requiredFieldsAreNamed() async {
        await expectCode(.invalidArgument, "volume_id") { _ = try await node.service.stage(.init()) }
        await expectCode(.invalidArgument, "staging_target_path") { _ = try await node.service.stage(.with { $0.volumeID = "a/b/c/d" }) }
        await expectCode(.invalidArgument, "volume_capability") {
            _ = try await node.service.stage(.with { $0.volumeID = "a/b/c/d"; $0.stagingTargetPath = node.kubelet + "/s" })
        }
        await expectCode(.invalidArgument, "target_path") { _ = try await node.service.publish(.with { $0.volumeID = "a/b/c/d" }) }
        await expectCode(.invalidArgument, "staging_target_path") {
            _ = try await node.service.publish(.with {
                $0.volumeID = "a/b/c/d"; $0.targetPath = node.kubelet + "/t"; $0.volumeCapability = NodeFixture.mount("ext4")
            })
        }
        await expectCode(.invalidArgument, "volume_path") { _ = try await node.service.volumeStats(.with { $0.volumeID = "a/b/c/d" }).value() }
        await expectCode(.invalidArgument, "volume_path") { _ = try await node.service.expand(.with { $0.volumeID = "a/b/c/d" }) }
        await expectCode(.invalidArgument, "fs_type") {
            _ = try await node.service.stage(.with {
                $0.volumeID = "a/b/c/d"; $0.stagingTargetPath = node.kubelet + "/s"; $0.volumeCapability = NodeFixture.mount("btrfs")
            })
        }
    }

    @Test(arguments: ["relative/staging", "/etc/staging", "KUBELET/plugins/../../../etc"])
    func pathsOutsideKubeletAreRefused(_ path: String) async {
        let path = path.replacingOccurrences(of: "KUBELET", with: node.kubelet)
        await expectCode(.invalidArgument, "staging_target_path") {
            _ = try await node.service.stage(.with {
                $0.volumeID = "a/b/c/d"; $0.stagingTargetPath = path; $0.volumeCapability = NodeFixture.mount("ext4")
            })
        }
    }

    @Test func aSymlinkEscapingKubeletIsRefused() async throws {
        let outside = try temporaryDirectory("outside")
        try FileManager.default.createSymbolicLink(atPath: node.kubelet + "/escape", withDestinationPath: outside)
        await expectCode(.invalidArgument, "symbolic link") {
            _ = try await node.service.publish(.with {
                $0.volumeID = "a/b/c/d"; $0.targetPath = node.kubelet + "/escape/target"
                $0.stagingTargetPath = node.kubelet + "/s"; $0.volumeCapability = NodeFixture.mount("ext4")
            })
        }
        await expectCode(.invalidArgument, "symbolic link") {
            _ = try await node.service.unpublish(.with { $0.volumeID = "a/b/c/d"; $0.targetPath = node.kubelet + "/escape" })
        }
    }

    @Test func volumesThatCannotBeThereAreNotFound() async {
        await expectCode(.notFound) { _ = try await node.service.volumeStats(.with { $0.volumeID = "x"; $0.volumePath = "some/path" }).value() }
        await expectCode(.notFound) {
            _ = try await node.service.volumeStats(.with { $0.volumeID = "a/b/c/d"; $0.volumePath = node.kubelet + "/missing" }).value()
        }
        await expectCode(.notFound) { _ = try await node.service.expand(.with { $0.volumeID = "x"; $0.volumePath = "some/path" }) }
    }

    @Test func infoWithoutAConfigUsesTheFlags() async throws {
        var settings = NodeSettings(nodeName: "worker-7")
        settings.region = "cluster-a"
        settings.zone = "pve3"
        settings.sysRoot = node.sysRoot
        let info = try await NodeService(settings: settings, volumes: nil).getInfo()
        #expect(info.nodeID == "worker-7")
        #expect(info.accessibleTopology.segments == [TopologyKey.region: "cluster-a", TopologyKey.zone: "pve3"])
        #expect(info.maxVolumesPerNode == 30)
    }

    @Test func capabilitiesAreWhatIsServed() {
        #expect(Set(NodeService.capabilities) == [.stageUnstageVolume, .expandVolume, .getVolumeStats, .volumeCondition, .singleNodeMultiWriter])
    }
}

@Suite struct SMBIOSTests {
    @Test func readsProxmoxSMBIOS1() {
        let identity = SMBIOSIdentity(smbios1: "uuid=6F9A3C1E-0B1D-4C2E-9F00-1234567890AB,serial=dm0tMTAw,base64=1")
        #expect(identity == SMBIOSIdentity(uuid: "6f9a3c1e-0b1d-4c2e-9f00-1234567890ab", serial: "vm-100"))
        #expect(SMBIOSIdentity(smbios1: "uuid=abc,serial=plain").serial == "plain")
    }

    @Test func theUUIDDecidesWhenBothHaveOne() {
        let guest = SMBIOSIdentity(uuid: "u1", serial: "s")
        #expect(guest.matches(SMBIOSIdentity(uuid: "u1", serial: nil)))
        #expect(!guest.matches(SMBIOSIdentity(uuid: "u2", serial: "s")))
        #expect(SMBIOSIdentity(uuid: nil, serial: "s").matches(SMBIOSIdentity(uuid: "u2", serial: "s")))
        #expect(!SMBIOSIdentity(uuid: nil, serial: nil).matches(SMBIOSIdentity(uuid: nil, serial: nil)))
    }

    @Test func ownDisksTakeSlotsAndVolumesDoNot() {
        let config = VMConfig(values: [
            "scsi0": "local-lvm:vm-100-disk-0,size=32G",
            "scsi1": "ceph:vm-9999-pvc-1,serial=x",
            "scsi2": "none,media=cdrom",
            "scsi3": "local:100/vm-100-disk-1.qcow2",
            "virtio0": "local-lvm:vm-100-disk-2",
        ], digest: "")
        #expect(NodeService.slotsTakenByOwnDisks(config, vmid: 100) == 3)
    }
}

let cryptsetupInstalled = FileManager.default.isExecutableFile(atPath: "/usr/sbin/cryptsetup")
