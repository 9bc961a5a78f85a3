@testable import CSIDriver
import CSIProto
import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Testing
import UnaryGRPC

/// ControllerPublish and ControllerUnpublish through the router.
@Suite struct PublishTests {
    @Test func aScsiPublishAnswersTheIdentityTheNodeLooksFor() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        let context = try await scene.publish(volume.volumeID, to: "worker-1")
        let handle = try VolumeHandle(parsing: volume.volumeID)
        #expect(context == ["serial": VolumeNaming.serial(for: handle), "wwn": VolumeNaming.wwn(for: handle), "bus": "scsi", "lun": "1"])
        let line = try #require(scene.fake.vm(100)!.values["scsi1"])
        #expect(line == "ceph:vm-9999-pvc-a,serial=\(context["serial"]!),wwn=\(context["wwn"]!),iothread=1,backup=0")
    }

    @Test func aVirtioPublishHasNoWWNAndNoLUN() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph", extra: ["bus": "virtio"])
        let context = try await scene.publish(volume.volumeID, to: "worker-1", context: volume.volumeContext)
        #expect(context["bus"] == "virtio" && context["wwn"] == nil && context["lun"] == nil)
        #expect(scene.disks(of: "ceph:vm-9999-pvc-a") == ["100:virtio0"])
    }

    @Test func theStorageClassesDiskOptionsAndAModifiedVolumesOptionsReachTheDiskLine() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph", extra: ["cache": "writeback", "diskIOPS": "500"])
        let _: Csi_V1_ControllerModifyVolumeResponse = try await scene.call("ControllerModifyVolume", Csi_V1_ControllerModifyVolumeRequest.with {
            $0.volumeID = volume.volumeID
            $0.mutableParameters = ["diskIOPS": "900"]
        })
        _ = try await scene.publish(volume.volumeID, to: "worker-1", context: volume.volumeContext)
        let line = try #require(scene.fake.vm(100)!.values["scsi1"])
        #expect(line.contains("cache=writeback") && line.contains("iops_rd=900") && !line.contains("iops_rd=500"))
    }

    @Test func publishingAgainAnswersTheSameAndWritesNothing() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        let first = try await scene.publish(volume.volumeID, to: "worker-1")
        let writes = scene.fake.writes.count
        #expect(try await scene.publish(volume.volumeID, to: "worker-1") == first)
        #expect(scene.fake.writes.count == writes)
    }

    @Test func aReadOnlyPublishWritesTheFlagAndTheOtherFlagIsRefused() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        _ = try await scene.publish(volume.volumeID, to: "worker-1", readonly: true)
        #expect(scene.fake.vm(100)!.values["scsi1"]!.hasSuffix(",ro=1"))
        await #expect { try await scene.publish(volume.volumeID, to: "worker-1") } throws: { ($0 as? RPCError)?.code == .alreadyExists }
    }

    @Test(arguments: [
        // what is wrong, the code
        ("attached to another VM", StatusCode.failedPrecondition),
        ("no such volume", .notFound),
        ("no such node", .notFound),
        ("local volume, VM on another node", .failedPrecondition),
        ("every slot taken", .resourceExhausted),
        ("hotplug without disk", .failedPrecondition),
        ("hotplug fails", .internal),
    ])
    func aPublishThatCannotBeDoneHasItsCodeAndLeavesNothingBehind(problem: String, code: StatusCode) async throws {
        let scene = ControllerScene()
        var volumeID = try await scene.create("pvc-a", storage: problem.hasPrefix("local") ? "local-lvm" : "ceph").volumeID
        var node = "worker-1"
        switch problem {
        case "attached to another VM": _ = try await scene.publish(volumeID, to: "worker-2")
        case "no such volume": volumeID = "main//ceph/vm-9999-gone"
        case "no such node": node = "worker-9"
        case "local volume, VM on another node": node = volumeID.hasPrefix("main/pve1/") ? "worker-2" : "worker-1"
        case "every slot taken":
            scene.fake.state.withLock { for slot in DiskBus.scsi.slots { $0.vms[100]!.values[slot] = $0.vms[100]!.values[slot] ?? "x:\(slot)" } }
        case "hotplug without disk": scene.fake.touch(100, set: "hotplug", to: "network")
        default: scene.fake.state.withLock { $0.failingHotplug = [100] }
        }
        let before = scene.disks(of: "ceph:vm-9999-pvc-a")
        await #expect { try await scene.publish(volumeID, to: node) } throws: { ($0 as? RPCError)?.code == code }
        #expect(scene.disks(of: "ceph:vm-9999-pvc-a") == before)
        #expect(scene.fake.vm(100)!.pending.isEmpty || problem == "hotplug fails")
    }

    @Test(arguments: ["volume_id", "node_id", "volume_capability"])
    func aMissingFieldIsInvalidAndNamed(field: String) async throws {
        let scene = ControllerScene()
        let request = Csi_V1_ControllerPublishVolumeRequest.with {
            if field != "volume_id" { $0.volumeID = "main//ceph/vm-9999-pvc-a" }
            if field != "node_id" { $0.nodeID = "worker-1" }
            if field != "volume_capability" { $0.volumeCapability = ControllerScene.mount }
        }
        do {
            let _: Csi_V1_ControllerPublishVolumeResponse = try await scene.call("ControllerPublishVolume", request)
            Issue.record("published")
        } catch {
            #expect(error.code == .invalidArgument && error.message.contains(field))
        }
    }

    @Test func aVolumeLeftOnAHolderIsReleasedAndPublished() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        scene.fake.addVM(140, node: "pve1", name: "proxmox-csi-holder-pve1", running: false, config: ["scsi0": "ceph:vm-9999-pvc-a"])
        _ = try await scene.publish(volume.volumeID, to: "worker-2")
        #expect(scene.disks(of: "ceph:vm-9999-pvc-a") == ["101:scsi1"])
    }

    @Test func concurrentPublishesOfManyVolumesToOneNodeAllSucceedInDistinctSlots() async throws {
        let scene = ControllerScene()
        var ids: [String] = []
        for index in 0..<8 { ids.append(try await scene.create("pvc-\(index)", storage: "ceph").volumeID) }
        let luns = try await withThrowingTaskGroup(of: String.self) { group in
            for id in ids { group.addTask { try await scene.publish(id, to: "worker-1")["lun"] ?? "" } }
            var luns: [String] = []
            for try await lun in group { luns.append(lun) }
            return luns
        }
        #expect(Set(luns) == Set((1...8).map(String.init)))
    }
}

@Suite struct UnpublishTests {
    @Test func unpublishingDetachesAndAgainIsDone() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        _ = try await scene.publish(volume.volumeID, to: "worker-1")
        try await scene.unpublish(volume.volumeID, from: "worker-1")
        #expect(scene.disks(of: "ceph:vm-9999-pvc-a").isEmpty)
        try await scene.unpublish(volume.volumeID, from: "worker-1")
    }

    @Test(arguments: [("main//ceph/vm-9999-gone", "worker-1"), ("main//ceph/vm-9999-pvc-a", "worker-9"), ("nonsense", "worker-1")])
    func unpublishingWhatIsNotThereIsDone(volumeID: String, node: String) async throws {
        let scene = ControllerScene()
        _ = try await scene.create("pvc-a", storage: "ceph")
        try await scene.unpublish(volumeID, from: node)
    }

    @Test func withoutANodeTheVolumeLeavesEveryVM() async throws {
        let scene = ControllerScene()
        _ = try await scene.create("pvc-a", storage: "ceph")
        scene.fake.touch(100, set: "scsi5", to: "ceph:vm-9999-pvc-a")
        scene.fake.touch(101, set: "scsi6", to: "ceph:vm-9999-pvc-a")
        try await scene.unpublish("main//ceph/vm-9999-pvc-a", from: "")
        #expect(scene.disks(of: "ceph:vm-9999-pvc-a").isEmpty)
    }

    @Test func aDetachTheVMCannotHotplugIsAFailedPrecondition() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        _ = try await scene.publish(volume.volumeID, to: "worker-1")
        scene.fake.touch(100, set: "hotplug", to: "usb")
        await #expect { try await scene.unpublish(volume.volumeID, from: "worker-1") } throws: { ($0 as? RPCError)?.code == .failedPrecondition }
        #expect(scene.fake.vm(100)!.pendingDelete == ["scsi1"])
    }

    @Test func anEmptyVolumeIDIsInvalid() async {
        #expect(await ControllerScene().code("ControllerUnpublishVolume", Csi_V1_ControllerUnpublishVolumeRequest.with { $0.nodeID = "worker-1" })
            == .invalidArgument)
    }
}

/// Volumes proxmox-csi-plugin attached (issue 14, item 4): its config lines carry
/// a WWN derived from the slot, hex("PVC-ID%02d"), and no serial.
@Suite struct PluginAttachedVolumeTests {
    /// A line as the plugin writes it for scsi7 (at a7c58ec: pkg/csi/utils.go sets wwn = 0x + hex("PVC-ID%02d", lun);
    /// pkg/csi/parameters.go defaults backup=0, iothread=1).
    static let pluginLine = "ceph:vm-9999-pvc-p,backup=0,iothread=1,wwn=0x5056432d49443037"

    @Test func publishAnswersTheIdentityTheConfigLineCarriesAndWritesNothing() async throws {
        let scene = ControllerScene()
        scene.fake.addVolume("ceph:vm-9999-pvc-p", node: nil, owner: 9999)
        scene.fake.touch(100, set: "scsi7", to: Self.pluginLine)
        let writes = scene.fake.writes.count
        let context = try await scene.publish("main//ceph/vm-9999-pvc-p", to: "worker-1")
        #expect(context == ["wwn": "0x5056432d49443037", "bus": "scsi", "lun": "7"])
        #expect(scene.fake.writes.count == writes)
        #expect(scene.fake.vm(100)!.values["scsi7"] == Self.pluginLine)
    }

    @Test func aPluginAttachedVolumeIsExpandedUnpublishedSnapshottedAndDeleted() async throws {
        let scene = ControllerScene()
        scene.fake.addVolume("ceph:vm-9999-pvc-p", node: nil, owner: 9999)
        scene.fake.touch(100, set: "scsi7", to: Self.pluginLine)
        let id = "main//ceph/vm-9999-pvc-p"
        let _: Csi_V1_ControllerExpandVolumeResponse = try await scene.call("ControllerExpandVolume", Csi_V1_ControllerExpandVolumeRequest.with {
            $0.volumeID = id
            $0.capacityRange.requiredBytes = 4 << 30
        })
        #expect(scene.fake.volume("ceph:vm-9999-pvc-p")?.size == 4 << 30)
        let snapshot = try await scene.snapshot("snap-p", of: id)
        #expect(snapshot.readyToUse)
        try await scene.unpublish(id, from: "worker-1")
        #expect(scene.fake.vm(100)!.values["scsi7"] == nil)
        #expect(await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = id }) == nil)
        // Its native snapshot needs its data: kept until the snapshot goes.
        #expect(scene.fake.volume("ceph:vm-9999-pvc-p") != nil)
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = snapshot.snapshotID }) == nil)
        #expect(scene.fake.volume("ceph:vm-9999-pvc-p") == nil)
    }

    @Test(arguments: [
        ("scsi3", "ceph:vm-9999-x,serial=csi-1,wwn=0x5abc", ["bus": "scsi", "serial": "csi-1", "wwn": "0x5abc", "lun": "3"]),
        ("scsi12", "ceph:vm-9999-x,wwn=0x5056432d49443132", ["bus": "scsi", "wwn": "0x5056432d49443132", "lun": "12"]),
        ("virtio2", "ceph:vm-9999-x,serial=csi-2,iothread=1", ["bus": "virtio", "serial": "csi-2"]),
        ("virtio4", "ceph:vm-9999-x,backup=0", ["bus": "virtio"]),
    ])
    func thePublishContextIsWhatTheLineSays(slot: String, line: String, expected: [String: String]) {
        #expect(ControllerService.publishContext(for: ProxmoxDomain.AttachedDisk(slot: slot, line: line)) == expected)
    }
}
