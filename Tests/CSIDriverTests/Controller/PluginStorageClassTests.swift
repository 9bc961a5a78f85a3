@testable import CSIDriver
import CSIProto
import FakeProxmox
import ProxmoxDomain
import Testing
import UnaryGRPC

/// StorageClasses and PVs written for proxmox-csi-plugin (issue 14, item 3): every
/// key of its pkg/csi/parameters.go (at a7c58ec) with its meaning and its defaults.
@Suite struct PluginStorageClassTests {
    /// The disk options publish writes for a volume whose context is `attributes`.
    func lineOptions(_ attributes: [String: String]) async throws -> [String] {
        let scene = ControllerScene()
        scene.fake.addVolume("ceph:vm-9999-pvc-q", node: nil, owner: 9999)
        _ = try await scene.publish("main//ceph/vm-9999-pvc-q", to: "worker-1", context: attributes)
        let line = try #require(scene.fake.vm(100)!.values["scsi1"])
        return line.split(separator: ",").dropFirst().map(String.init).filter { !$0.hasPrefix("serial=") && !$0.hasPrefix("wwn=") }
    }

    /// The classes of the plugin's docs (docs/proxmox-lvm.yaml, docs/proxmox-rbd.yaml with its
    /// commented storageFormat, docs/volume-attributes.yaml, docs/options.md without its replication)
    /// and what each disk gets: the plugin's defaults backup=0 and iothread=1, discard with ssd.
    @Test(arguments: [
        (["csi.storage.k8s.io/fstype": "xfs", "storage": "ceph"], ["iothread=1", "backup=0"]),
        (["csi.storage.k8s.io/fstype": "xfs", "storage": "ceph", "storageFormat": "qcow2"], ["iothread=1", "backup=0"]),
        (["csi.storage.k8s.io/fstype": "xfs", "storage": "ceph", "ssd": "true"], ["discard=on", "ssd=1", "iothread=1", "backup=0"]),
        (["csi.storage.k8s.io/fstype": "ext4", "blockSize": "4096", "inodeSize": "256", "storage": "ceph", "storageFormat": "raw",
          "cache": "directsync", "ssd": "true", "diskIOPS": "4000", "diskMBps": "1000"],
         ["cache=directsync", "discard=on", "ssd=1", "iothread=1", "backup=0", "iops_rd=4000", "iops_wr=4000", "mbps_rd=1000", "mbps_wr=1000"]),
    ] as [([String: String], [String])])
    func thePluginsExampleClassesGiveThePluginsDisks(parameters: [String: String], options: [String]) async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-x", storage: "ceph", extra: parameters)
        _ = try await scene.publish(volume.volumeID, to: "worker-1", context: volume.volumeContext)
        let line = try #require(scene.fake.vm(100)!.values["scsi1"])
        #expect(Array(line.split(separator: ",").dropFirst(3).map(String.init)) == options)
    }

    /// A PV the plugin made carries its parameters as volumeAttributes (StorageParameters.ToMap:
    /// every bool written, "1"/"0"); publish reads them with the plugin's meaning.
    @Test func aPluginPVsAttributesGiveTheSameDisk() async throws {
        let attributes = ["storage": "ceph", "backup": "0", "iothread": "1", "replicate": "0", "ssd": "1",
                          "cache": "none", "diskIOPS": "100", "aio": "native"]
        #expect(try await lineOptions(attributes)
            == ["cache=none", "discard=on", "ssd=1", "iothread=1", "backup=0", "iops_rd=100", "iops_wr=100", "aio=native"])
    }

    @Test func aClassOverridesThePluginsDefaults() async throws {
        #expect(try await lineOptions(["iothread": "false", "backup": "true", "ssd": "true", "discard": "false"])
            == ["discard=ignore", "ssd=1", "iothread=0", "backup=1"])
    }

    /// The plugin reads bools with Go's strconv.ParseBool.
    @Test(arguments: [("t", true), ("T", true), ("TRUE", true), ("True", true), ("1", true),
                      ("f", false), ("F", false), ("FALSE", false), ("False", false), ("0", false)] as [(String, Bool)])
    func goBoolSpellingsAreRead(_ text: String, _ value: Bool) throws {
        let config = try DriverConfig.parse("clusters: [{name: main, url: \"https://pve:8006\", tokenID: \"csi@pve!csi\", tokenSecret: s}]")
        let parameters = try VolumeParameters.parse(["storage": "ceph", "backup": text], config: config, cluster: "main")
        #expect(parameters.disk.backup == value)
    }

    @Test(arguments: [
        (["aio": "fast"], "\"aio\" must be one of native, threads, io_uring"),
        (["aio": "native", "cache": "writeback"], "\"aio\" native needs a direct cache"),
        (["storageFormat": "vmdk"], "\"storageFormat\" must be one of raw, qcow2"),
        (["resizeSizeBytes": "big"], "\"resizeSizeBytes\" must be a whole number of bytes"),
        // The plugin's docs/proxmox-zfs.yaml, verbatim.
        (["csi.storage.k8s.io/fstype": "xfs", "storage": "local-lvm", "ssd": "true", "aio": "native", "cache": "directsync",
          "replicate": "true", "replicateSchedule": "*/15", "replicateZones": "rnd-1,rnd-2"],
         "\"replicate\" asks for Proxmox storage replication, which this driver does not do"),
    ] as [([String: String], String)])
    func whatCannotBeDoneIsRefusedNamingTheKey(parameters: [String: String], message: String) async {
        let scene = ControllerScene()
        do {
            _ = try await scene.create("pvc-x", extra: parameters)
            Issue.record("created with \(parameters)")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(message), "\(error.message)")
        }
        #expect(scene.fake.count(.allocate) == 0)
    }

    @Test func replicationKeysWithoutReplicateMeanNothingAsInThePlugin() async throws {
        #expect(try await lineOptions(["replicate": "false", "replicateSchedule": "*/5", "replicateZones": "pve1,pve2"])
            == ["iothread=1", "backup=0"])
    }

    @Test(arguments: ["replicateSchedule", "replicateZones"])
    func aVolumeAttributesClassCannotScheduleReplication(key: String) async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-x")
        let code = await scene.code("ControllerModifyVolume", Csi_V1_ControllerModifyVolumeRequest.with {
            $0.volumeID = volume.volumeID
            $0.mutableParameters = [key: "*/30"]
        })
        #expect(code == .invalidArgument)
    }

    /// qcow2 on a file storage: the file is named and allocated as qcow2 (pve-storage checks the
    /// extension against the format); block storages hold raw volumes and ignore it, as the plugin does.
    @Test(arguments: [("local", "qcow2", "local:9999/vm-9999-pvc-f.qcow2", "qcow2"), ("local", nil, "local:9999/vm-9999-pvc-f.raw", "raw"),
                      ("local-lvm", "qcow2", "local-lvm:vm-9999-pvc-f", nil)] as [(String, String?, String, String?)])
    func storageFormatNamesTheFileOnFileStorages(storage: String, format: String?, volid: String, stored: String?) async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-f", storage: storage, extra: format.map { ["storageFormat": $0] } ?? [:])
        let made = try #require(scene.fake.volume(volid))
        #expect(made.format == stored)
        #expect(volume.volumeContext["storageFormat"] == format)
        // Found again by a retry, and published by its id.
        #expect(try await scene.create("pvc-f", storage: storage, extra: format.map { ["storageFormat": $0] } ?? [:]).volumeID == volume.volumeID)
        _ = try await scene.publish(volume.volumeID, to: "worker-1", context: volume.volumeContext)
        #expect(scene.disks(of: volid) == ["100:scsi1"])
    }

    @Test func aRestoreIntoAQcow2ClassImportsAsQcow2() async throws {
        let scene = ControllerScene()
        let source = try await scene.create("pvc-s", storage: "local", extra: ["storageFormat": "qcow2"])
        // Attached, a qcow2 image is snapshotted as a copy (never qemu-img snapshot under a running QEMU).
        _ = try await scene.publish(source.volumeID, to: "worker-1")
        let snapshot = try await scene.snapshot("snap-s", of: source.volumeID)
        let _: Csi_V1_CreateVolumeResponse = try await scene.call("CreateVolume", Csi_V1_CreateVolumeRequest.with {
            $0.name = "pvc-r"
            $0.volumeCapabilities = [ControllerScene.mount]
            $0.parameters = ["storage": "local", "storageFormat": "qcow2"]
            $0.volumeContentSource.snapshot.snapshotID = snapshot.snapshotID
        })
        let imports = scene.fake.writes.compactMap { $0.set["scsi0"] }.filter { $0.contains("import-from=") }
        #expect(imports.count == 2)
        #expect(imports.last?.hasSuffix(",format=qcow2") == true)
    }

    /// The plugin's restore from a smaller snapshot left `resizeSizeBytes` in the PV for its
    /// publish to grow the disk to, and `resizeRequired` for its node to grow the filesystem.
    @Test func aSizeThePluginStillOwedIsGrownAtPublishAndTheNodeIsTold() async throws {
        let scene = ControllerScene()
        scene.fake.addVolume("ceph:vm-9999-pvc-r", node: nil, owner: 9999, size: 1 << 30)
        let attributes = ["storage": "ceph", "resizeRequired": "true", "resizeSizeBytes": String(2 << 30)]
        let context = try await scene.publish("main//ceph/vm-9999-pvc-r", to: "worker-1", context: attributes)
        #expect(context["resizeRequired"] == "true")
        #expect(scene.fake.volume("ceph:vm-9999-pvc-r")?.size == 2 << 30)

        let again = try await scene.publish("main//ceph/vm-9999-pvc-r", to: "worker-1", context: attributes)
        #expect(again["resizeRequired"] == nil)
        #expect(scene.fake.count(.resize) == 1)
    }
}
