@testable import CSIDriver
@testable import ProxmoxDomain
import ProxmoxAPI
import CSIProto
import Testing
import UnaryGRPC

@Suite struct VolumeHandleTests {
    @Test(arguments: [
        ("main/pve1/local-lvm/vm-9999-pvc-1", VolumeHandle(cluster: "main", node: "pve1", storage: "local-lvm", volume: "vm-9999-pvc-1")),
        ("main//ceph/vm-9999-pvc-1", VolumeHandle(cluster: "main", node: nil, storage: "ceph", volume: "vm-9999-pvc-1")),
        // As sergelogvinov/proxmox-csi-plugin writes them.
        ("Region-1/pve-1/local-lvm/vm-9999-pvc-0f3c", VolumeHandle(cluster: "Region-1", node: "pve-1", storage: "local-lvm", volume: "vm-9999-pvc-0f3c")),
    ])
    func roundTrips(_ id: String, expected: VolumeHandle) throws {
        let handle = try VolumeHandle(parsing: id)
        #expect(handle == expected)
        #expect(handle.description == id)
    }

    @Test(arguments: ["", "vol", "a/b/c", "a/b/c/d//e", "a/b/c/9999/", "/pve1/local-lvm/x", "a/b//x", "a/b/c/", "a/b/Local_LVM/x", "a/b/c/vm 1", "a/b/c/x:y"])
    func refusesMalformed(_ id: String) {
        #expect(throws: VolumeHandle.ParseError.malformed(id)) { try VolumeHandle(parsing: id) }
    }

    /// Every case of proxmox-csi-plugin's pkg/utils/volume/volume_test.go (at a7c58ec):
    /// id, cluster, node, storage, disk, owner vmid, volid.
    @Test(arguments: [
        ("region/zone/storage/disk", "region", "zone", "storage", "disk", nil, "storage:disk"),
        ("region/zone/storage/100/vm-100-disk-0.raw", "region", "zone", "storage", "100/vm-100-disk-0.raw", 100, "storage:100/vm-100-disk-0.raw"),
        ("region/zone/storage/vm-1000-disk", "region", "zone", "storage", "vm-1000-disk", 1000, "storage:vm-1000-disk"),
        ("region//storage/vm-1000-disk", "region", nil, "storage", "vm-1000-disk", 1000, "storage:vm-1000-disk"),
        ("region/zone/storage/1000/folder/vm-1000-disk.raw", "region", "zone", "storage", "1000/folder/vm-1000-disk.raw", 1000,
         "storage:1000/folder/vm-1000-disk.raw"),
        ("region//storage/1000/folder/vm-1000-disk.raw", "region", nil, "storage", "1000/folder/vm-1000-disk.raw", 1000,
         "storage:1000/folder/vm-1000-disk.raw"),
        ("region//storage/1000/folder.dev/vm-1000-disk.raw", "region", nil, "storage", "1000/folder.dev/vm-1000-disk.raw", 1000,
         "storage:1000/folder.dev/vm-1000-disk.raw"),
    ] as [(String, String, String?, String, String, Int?, String)])
    func everyIdThePluginWritesParsesWithItsMeaning(id: String, cluster: String, node: String?, storage: String, disk: String,
                                                   owner: Int?, volid: String) throws {
        let handle = try VolumeHandle(parsing: id)
        #expect(handle.cluster == cluster && handle.node == node && handle.storage == storage && handle.volume == disk)
        #expect(handle.ownerVMID == owner)
        #expect(handle.volid(ownerVMID: 9999, storageType: "lvmthin") == volid)
        #expect(handle.description == id)  // PVs keep their ids: the form given is the form answered
    }

    @Test func thePluginsThreePartIdIsRefusedAsItRefusesIt() {
        // volume_test.go TestNewVolumeFromVolumeIDError.
        #expect(throws: VolumeHandle.ParseError.malformed("region/storage/disk")) { try VolumeHandle(parsing: "region/storage/disk") }
    }

    @Test func theTwoFormsOfAFileStoragesIdNameOneDiskWithOneIdentity() throws {
        let ours = try VolumeHandle(parsing: "main/pve1/local/vm-9999-pvc-a.raw")
        let plugins = try VolumeHandle(parsing: "main/pve1/local/9999/vm-9999-pvc-a.raw")
        #expect(ours.volid(ownerVMID: 9999, storageType: "dir") == plugins.volid(ownerVMID: 9999, storageType: "dir"))
        #expect(VolumeNaming.serial(for: ours) == VolumeNaming.serial(for: plugins))
        #expect(VolumeNaming.wwn(for: ours) == VolumeNaming.wwn(for: plugins))
    }

    @Test func volidFollowsTheStorageType() {
        let handle = VolumeHandle(cluster: "c", node: "n", storage: "s", volume: "vm-9999-x")
        #expect(handle.volid(ownerVMID: 9999, storageType: "lvmthin") == "s:vm-9999-x")
        #expect(handle.volid(ownerVMID: 9999, storageType: "dir") == "s:9999/vm-9999-x")
    }
}

@Suite struct VolumeNamingTests {
    @Test func sha256MatchesKnownVectors() {
        #expect(sha256Hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(sha256Hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(sha256Hex(String(repeating: "a", count: 1000)) == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    @Test func provisionerNamesAreKeptAndOthersHashedStably() {
        #expect(VolumeNaming.volumeName(forCSIName: "pvc-0f3c5d1e-aaaa-bbbb-cccc-123456789abc", ownerVMID: 9999, storageType: "lvmthin")
            == "vm-9999-pvc-0f3c5d1e-aaaa-bbbb-cccc-123456789abc")
        let odd = VolumeNaming.volumeName(forCSIName: "Sanity Volume/ÜÖ", ownerVMID: 9999, storageType: "zfspool")
        #expect(odd.hasPrefix("vm-9999-csi-") && odd.count == "vm-9999-csi-".count + 32)
        #expect(odd == VolumeNaming.volumeName(forCSIName: "Sanity Volume/ÜÖ", ownerVMID: 9999, storageType: "zfspool"))
        #expect(VolumeNaming.volumeName(forCSIName: String(repeating: "a", count: 128), ownerVMID: 9999, storageType: "rbd").count <= 48)
        #expect(VolumeNaming.volumeName(forCSIName: "pvc-1", ownerVMID: 9999, storageType: "dir") == "vm-9999-pvc-1.raw")
    }

    @Test func serialAndWWNIdentifyTheVolumeNotItsNode() {
        let here = VolumeHandle(cluster: "c", node: "pve1", storage: "ceph", volume: "vm-9999-pvc-1")
        var moved = here
        moved.node = "pve2"
        let other = VolumeHandle(cluster: "c", node: "pve1", storage: "ceph", volume: "vm-9999-pvc-2")
        let serial = VolumeNaming.serial(for: here)
        #expect(serial.utf8.count == 20)
        #expect(serial == VolumeNaming.serial(for: moved))
        #expect(serial != VolumeNaming.serial(for: other))
        let wwn = VolumeNaming.wwn(for: here)
        #expect(wwn.range(of: #"^0x5[0-9a-f]{15}$"#, options: .regularExpression) != nil)
    }
}

@Suite struct VolumeParametersTests {
    let config = try! DriverConfig.parse("""
    clusters:
      - name: main
        url: https://pve:8006
        tokenID: csi@pve!csi
        tokenSecret: s
      - name: dr
        url: https://pve-dr:8006
        tokenID: csi@pve!csi
        tokenSecret: s
    profiles:
      fast:
        storages: {main: nvme, dr: ssd-pool}
        ssd: true
        discard: true
        iops: 3000
        fsType: xfs
    """)

    @Test func profileGivesDefaultsAndTheStorageClassWins() throws {
        let parameters = try VolumeParameters.parse(["profile": "fast", "diskIOPS": "500", "csi.storage.k8s.io/pv/name": "pv-1"],
                                                    config: config, cluster: "dr")
        #expect(parameters.storage == "ssd-pool")
        #expect(parameters.disk.iops == 500 && parameters.disk.ssd == true && parameters.fsType == "xfs")
        #expect(parameters.diskOptions.map(\.0) == ["discard", "ssd", "iothread", "backup", "iops_rd", "iops_wr"])
    }

    @Test func plainStorageHasSafeDefaults() throws {
        let parameters = try VolumeParameters.parse(["storage": "local-lvm"], config: config, cluster: "main")
        #expect(parameters == VolumeParameters(storage: "local-lvm"))
        #expect(parameters.bus == "scsi" && parameters.fsType == "ext4")
    }

    /// qemu-server's virtio drive format has no ssd key: a virtio disk's options never carry it.
    @Test func virtioDisksNeverCarrySSD() throws {
        let virtio = try VolumeParameters.parse(["storage": "tank", "bus": "virtio", "ssd": "false", "discard": "true"], config: config, cluster: "main")
        #expect(virtio.diskOptions.map(\.0) == ["discard", "iothread", "backup"])
        let scsi = try VolumeParameters.parse(["storage": "tank", "bus": "scsi", "ssd": "false"], config: config, cluster: "main")
        #expect(scsi.diskOptions.map(\.0) == ["ssd", "iothread", "backup"])
    }

    @Test(arguments: [
        ([:], "must name a Proxmox storage"),
        (["storage": "tank", "colour": "red"], "\"colour\" is not known"),
        (["profile": "slow"], "\"profile\" names \"slow\", which the driver's config does not define (defined: fast)"),
        (["storage": "Local_LVM"], "\"storage\" \"Local_LVM\" is not a Proxmox storage id"),
        (["storage": "tank", "csi.storage.k8s.io/fstype": "btrfs"], "fstype\" must be one of xfs, ext4"),
        (["storage": "tank", "bus": "ide"], "\"bus\" must be one of scsi, virtio"),
        (["storage": "tank", "ssd": "maybe"], "\"ssd\" must be true or false"),
        (["storage": "tank", "bus": "virtio", "ssd": "true"], "\"ssd\" cannot be true with bus virtio"),
        (["storage": "tank", "diskIOPS": "-1"], "\"diskIOPS\" must be a whole number"),
        (["storage": "tank", "blockSize": "1000"], "\"blockSize\" must be a power of two"),
    ] as [([String: String], String)])
    func invalidParametersNameTheKey(parameters: [String: String], message: String) {
        #expect {
            _ = try VolumeParameters.parse(parameters, config: config, cluster: "main")
        } throws: { error in
            guard let error = error as? RPCError else { return false }
            return error.code == .invalidArgument && error.message.contains(message)
        }
    }
}

@Suite struct CapabilityCheckTests {
    func capability(_ mode: Csi_V1_VolumeCapability.AccessMode.Mode, fs: String? = "xfs") -> Csi_V1_VolumeCapability {
        .with {
            $0.accessMode.mode = mode
            if let fs { $0.mount.fsType = fs } else { $0.block = .init() }
        }
    }

    @Test func singleNodeModesOnBlockAndMountAreSupported() throws {
        try CapabilityCheck.require([capability(.singleNodeWriter), capability(.singleNodeReaderOnly, fs: nil),
                                     capability(.singleNodeMultiWriter, fs: "")], field: "volume_capabilities")
    }

    @Test(arguments: [
        ([], "volume_capabilities is required"),
        ([Csi_V1_VolumeCapability.with { $0.accessMode.mode = .multiNodeMultiWriter; $0.block = .init() }], "volume_capabilities[0]: access mode"),
        ([Csi_V1_VolumeCapability.with { $0.mount.fsType = "xfs" }], "access_mode is missing"),
        ([Csi_V1_VolumeCapability.with { $0.accessMode.mode = .singleNodeWriter }], "access_type is missing"),
        ([Csi_V1_VolumeCapability.with { $0.accessMode.mode = .singleNodeWriter; $0.mount.fsType = "zfs" }], "fs_type \"zfs\""),
    ] as [([Csi_V1_VolumeCapability], String)])
    func unsupportedCapabilitiesAreInvalidArgument(capabilities: [Csi_V1_VolumeCapability], message: String) {
        #expect {
            try CapabilityCheck.require(capabilities, field: "volume_capabilities")
        } throws: { error in
            (error as? RPCError).map { $0.code == .invalidArgument && $0.message.contains(message) } ?? false
        }
    }
}

@Suite struct CopyVMTests {
    let vm = VMRef(cluster: "sim", node: "pve1", vmid: 120, name: CopyVM.vmName(.snapshot, csiName: "snap-1"))

    @Test func readsBackWhatItWrote() throws {
        let description = CopyVM.description(.snapshot, csiName: "snap-1", source: "sim//ceph/vm-9999-pvc-1", createdAt: 1_700_000_000)
        let config = VMConfig(values: ["name": vm.name, "description": description, "scsi0": "ceph:vm-120-disk-0,size=1G"], digest: "x")
        let copy = try #require(CopyVM.parse(vm, config: config))
        #expect(copy.kind == .snapshot && copy.csiName == "snap-1" && copy.source == "sim//ceph/vm-9999-pvc-1")
        #expect(copy.createdAt == 1_700_000_000 && copy.volid == "ceph:vm-120-disk-0" && !copy.copying)
    }

    @Test func aCopyStillBeingMadeIsNotReady() throws {
        let description = CopyVM.description(.snapshot, csiName: "snap-1", source: "s", createdAt: 1)
        let config = VMConfig(values: ["description": description, "lock": "create"], digest: "x")
        let copy = try #require(CopyVM.parse(vm, config: config))
        #expect(copy.copying && copy.volid == nil)
    }

    @Test func aVMWhoseNameDoesNotMatchItsRecordIsNotACopy() {
        let description = CopyVM.description(.snapshot, csiName: "another-name", source: "s", createdAt: 1)
        #expect(CopyVM.parse(vm, config: VMConfig(values: ["description": description], digest: "x")) == nil)
        let plain = VMRef(cluster: "sim", node: "pve1", vmid: 100, name: "k8s-node-1")
        #expect(CopyVM.parse(plain, config: VMConfig(values: ["description": description], digest: "x")) == nil)
    }

    @Test func restoredVolumesKnowTheirOwner() {
        #expect(VolumeHandle(cluster: "c", node: nil, storage: "ceph", volume: "vm-123-disk-0").ownerVMID == 123)
        #expect(VolumeHandle(cluster: "c", node: nil, storage: "ceph", volume: "vm-9999-pvc-1").ownerVMID == 9999)
        #expect(VolumeHandle(cluster: "c", node: nil, storage: "ceph", volume: "pvc-1.raw").ownerVMID == nil)
    }
}

@Suite struct ConfigBatchTests {
    @Test func aBatchSendsOnlyWhatItsEditsChanged() {
        let old = ["scsi0": "ceph:vm-9999-a", "scsi1": "ceph:vm-9999-b", "name": "k8s-node-1"]
        var draft = old
        draft["scsi1"] = nil                               // a detach
        draft["scsi2"] = "ceph:vm-9999-c,serial=x"         // an attach
        draft["scsi0"] = "ceph:vm-9999-a,iops_rd=100"      // an option change
        let (set, delete) = ConfigBatches.difference(from: old, to: draft)
        #expect(set.map(\.0) == ["scsi0", "scsi2"] && set.map(\.1) == ["ceph:vm-9999-a,iops_rd=100", "ceph:vm-9999-c,serial=x"])
        #expect(delete == ["scsi1"])
        // An attach and a detach of the same slot in one batch cancel out.
        var churn = old
        churn["scsi3"] = "ceph:vm-9999-d"
        churn["scsi3"] = nil
        #expect(ConfigBatches.difference(from: old, to: churn).set.isEmpty && ConfigBatches.difference(from: old, to: churn).delete.isEmpty)
    }

    @Test func aSlotFreedInABatchIsNotFreeUntilTheNextWrite() {
        var draft = ConfigDraft(config: VMConfig(values: ["scsi0": "local-lvm:vm-100-disk-0", "scsi1": "ceph:vm-9999-a"], digest: "d"))
        draft.values["scsi1"] = nil  // a detach in this batch
        #expect(!draft.isFree("scsi0") && !draft.isFree("scsi1") && draft.isFree("scsi2"))
        draft.values["scsi2"] = "ceph:vm-9999-b"  // an attach in this batch
        #expect(!draft.isFree("scsi2") && draft.isFree("scsi3"))
    }

    /// A slot is taken while the current config or a pending change holds it;
    /// a disk counts as attached in either state (qemu-server keeps what it
    /// could not hot-plug in the pending section).
    @Test func pendingChangesHoldSlotsAndDisks() {
        let config = VMConfig(values: ["scsi0": "local-lvm:vm-100-disk-0", "scsi1": "ceph:vm-9999-gone,serial=a", "hotplug": "network,usb"],
                              digest: "d", pending: ["scsi2": "ceph:vm-9999-new,serial=b"], pendingDelete: ["scsi1"])
        let draft = ConfigDraft(config: config)
        #expect(!draft.isFree("scsi1") && !draft.isFree("scsi2") && draft.isFree("scsi3"))
        #expect(ProxmoxVolumes.disks(holding: "ceph:vm-9999-gone", in: config) == ["scsi1"])
        #expect(ProxmoxVolumes.disks(holding: "ceph:vm-9999-new", in: config) == ["scsi2"])
        #expect(config.isSettled("scsi0") && !config.isSettled("scsi1") && !config.isSettled("scsi2"))
        #expect(config.hotplugWithoutDisk == "network,usb")
    }

    @Test(arguments: [(nil, nil), ("1", nil), ("network,disk", nil), ("0", "0"), ("network,usb", "network,usb"), ("cpu", "cpu")] as [(String?, String?)])
    func hotplugOptionsThatLeaveOutDisks(hotplug: String?, leftOut: String?) {
        let config = VMConfig(values: hotplug.map { ["hotplug": $0] } ?? [:], digest: "d")
        #expect(config.hotplugWithoutDisk == leftOut)
    }

    @Test func onlyErrorsThatMayComeFromOneEditSplitABatch() {
        #expect(ConfigBatches.mayConcernOneEdit(.server(status: 500, message: "hotplug problem")))
        #expect(ConfigBatches.mayConcernOneEdit(.invalidParameters(["scsi3": "bad"])))
        #expect(!ConfigBatches.mayConcernOneEdit(.vmLocked(vmid: 100, lock: "backup")))
        #expect(!ConfigBatches.mayConcernOneEdit(.configLockTimeout("got timeout")))
        #expect(!ConfigBatches.mayConcernOneEdit(.notFound("VM 100")))
    }
}
