@testable import CSIDriver
import CSIProto
import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Testing
import UnaryGRPC

/// CreateSnapshot, DeleteSnapshot, ListSnapshots, and volumes restored or cloned from them,
/// on storages without native snapshots (lvm thick): full copies held by copy VMs.
@Suite struct SnapshotRPCTests {
    @Test func aSnapshotIsReadyWithItsSourceSizeAndTimeAndAskingAgainAnswersTheSame() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "thick", bytes: 2 << 30)
        let first = try await scene.snapshot("snap-1", of: volume.volumeID)
        #expect(first.readyToUse && first.sourceVolumeID == volume.volumeID && first.sizeBytes == 2 << 30)
        #expect(first.creationTime.seconds > 1_700_000_000)
        #expect(first.snapshotID.hasPrefix("main/") && first.snapshotID.hasSuffix("/" + CopyVM.vmName(.snapshot, csiName: "snap-1")))
        #expect(try await scene.snapshot("snap-1", of: volume.volumeID) == first)
        #expect(scene.fake.count(.createVM) == 1)
    }

    @Test func aSnapshotStillBeingCopiedIsNotReadyYet() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "thick")
        scene.fake.state.withLock { $0.slowImports = true }
        #expect(try await !scene.snapshot("snap-1", of: volume.volumeID).readyToUse)
        scene.fake.state.withLock { $0.slowImports = false }
        scene.fake.finishImports()
        #expect(try await scene.snapshot("snap-1", of: volume.volumeID).readyToUse)
    }

    @Test(arguments: [
        ("the name is taken for another volume", StatusCode.alreadyExists),
        ("no such source", .notFound),
        ("a parameter", .invalidArgument),
        ("no name", .invalidArgument),
        ("no source", .invalidArgument),
    ])
    func aSnapshotThatCannotBeTakenHasItsCode(problem: String, code: StatusCode) async throws {
        let scene = ControllerScene()
        let a = try await scene.create("pvc-a", storage: "thick")
        let b = try await scene.create("pvc-b", storage: "thick")
        _ = try await scene.snapshot("snap-1", of: a.volumeID)
        let request = Csi_V1_CreateSnapshotRequest.with {
            $0.name = problem == "no name" ? "" : "snap-2"
            $0.sourceVolumeID = problem == "no source" ? "" : b.volumeID
            if problem.hasPrefix("the name") { $0.name = "snap-1" }
            if problem == "no such source" { $0.sourceVolumeID = "main/pve1/local-lvm/vm-9999-gone" }
            if problem == "a parameter" { $0.parameters = ["speed": "fast"] }
        }
        #expect(await scene.code("CreateSnapshot", request) == code)
        #expect(try await scene.volumes.copyVMs(.snapshot).count == 1)
    }

    @Test func deletingASnapshotFreesItsCopyAndAgainIsDone() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "thick")
        let snapshot = try await scene.snapshot("snap-1", of: volume.volumeID)
        for _ in 0..<2 {
            #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = snapshot.snapshotID }) == nil)
        }
        #expect(try await scene.volumes.copyVMs(.snapshot).isEmpty)
        #expect(scene.fake.volumeCount == 1)
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest()) == .invalidArgument)
    }

    /// A copy (thick) and native snapshots (lvmthin) listed together.
    @Test func snapshotsAreListedByIDBySourceAndInPages() async throws {
        let scene = ControllerScene()
        let a = try await scene.create("pvc-a", storage: "thick")
        let b = try await scene.create("pvc-b")
        let s1 = try await scene.snapshot("s1", of: a.volumeID)
        _ = try await scene.snapshot("s2", of: a.volumeID)
        _ = try await scene.snapshot("s3", of: b.volumeID)
        func list(_ build: (inout Csi_V1_ListSnapshotsRequest) -> Void) async throws -> Csi_V1_ListSnapshotsResponse {
            try await scene.call("ListSnapshots", Csi_V1_ListSnapshotsRequest.with(build))
        }
        #expect(try await list { _ in }.entries.count == 3)
        #expect(try await list { $0.snapshotID = s1.snapshotID }.entries.map(\.snapshot) == [s1])
        let s3 = try await list { $0.sourceVolumeID = b.volumeID }.entries.map(\.snapshot)
        #expect(s3.count == 1 && s3[0].readyToUse)
        #expect(try await list { $0.snapshotID = s3[0].snapshotID }.entries.map(\.snapshot) == s3)
        #expect(try await list { $0.snapshotID = "main/1/csi-snap-none" }.entries.isEmpty)
        #expect(try await list { $0.sourceVolumeID = a.volumeID }.entries.count == 2)
        let page = try await list { $0.maxEntries = 2 }
        #expect(page.entries.count == 2 && page.nextToken == "2")
        #expect(try await list { $0.startingToken = page.nextToken }.entries.count == 1)
    }

    @Test func aVolumeRestoredFromASnapshotIsACopyOwnedByItsRecordVMAtLeastTheSnapshotsSize() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "thick", bytes: 2 << 30)
        let snapshot = try await scene.snapshot("snap-1", of: volume.volumeID)
        let restored = try await scene.restore("pvc-r", storage: "thick") { $0.snapshot.snapshotID = snapshot.snapshotID }
        #expect(restored.capacityBytes == 2 << 30 && restored.contentSource.snapshot.snapshotID == snapshot.snapshotID)
        let handle = try VolumeHandle(parsing: restored.volumeID)
        let record = try #require(scene.fake.vms(named: CopyVM.vmName(.volume, csiName: "pvc-r")).first)
        #expect(handle.ownerVMID == record.vmid && handle.node == "pve1")
        // Asking again answers the same volume.
        #expect(try await scene.restore("pvc-r", storage: "thick") { $0.snapshot.snapshotID = snapshot.snapshotID }.volumeID == restored.volumeID)
        // The restored volume is usable like any other.
        _ = try await scene.publish(restored.volumeID, to: "worker-1")
        #expect(scene.disks(of: "thick:\(handle.volume)") == ["100:scsi1"])
    }

    @Test func aCloneIsGrownToTheSizeAsked() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        let clone = try await scene.restore("pvc-c", storage: "ceph", bytes: 3 << 30) { $0.volume.volumeID = volume.volumeID }
        #expect(clone.capacityBytes == 3 << 30 && clone.volumeID.hasPrefix("main//ceph/vm-"))
    }

    @Test(arguments: [
        ("snapshot not found", StatusCode.notFound),
        ("source volume not found", .notFound),
        ("snapshot still copying", .unavailable),
        ("name taken with another source", .alreadyExists),
        ("limit below the source", .outOfRange),
        ("no such storage", .invalidArgument),
        ("local storage off the source's node", .invalidArgument),
    ])
    func aRestoreThatCannotBeDoneHasItsCode(problem: String, code: StatusCode) async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "thick", bytes: 2 << 30)
        if problem == "snapshot still copying" { scene.fake.state.withLock { $0.slowImports = true } }
        let snapshot = try await scene.snapshot("snap-1", of: volume.volumeID)
        scene.fake.state.withLock { $0.slowImports = false }
        if problem.hasPrefix("name taken") { _ = try await scene.restore("pvc-r", storage: "thick") { $0.volume.volumeID = volume.volumeID } }
        if problem.hasPrefix("local storage") { scene.fake.addStorage("pve2-only", type: "lvmthin", nodes: ["pve2"]) }
        let request = Csi_V1_CreateVolumeRequest.with {
            $0.name = "pvc-r"
            $0.volumeCapabilities = [ControllerScene.mount]
            $0.parameters = ["storage": problem == "no such storage" ? "nowhere" : problem.hasPrefix("local") ? "pve2-only" : "thick"]
            if problem == "limit below the source" { $0.capacityRange.limitBytes = 1 << 30 }
            switch problem {
            case "snapshot not found": $0.volumeContentSource.snapshot.snapshotID = "main/1/csi-snap-none"
            case "source volume not found": $0.volumeContentSource.volume.volumeID = "main/pve1/thick/vm-9999-gone"
            case "name taken with another source", "local storage off the source's node": $0.volumeContentSource.snapshot.snapshotID = snapshot.snapshotID
            default: $0.volumeContentSource.snapshot.snapshotID = snapshot.snapshotID
            }
        }
        #expect(await scene.code("CreateVolume", request) == code)
    }
}

/// Snapshots proxmox-csi-plugin took before the switch (issue 14): a plain volume
/// `vm-<controllerVmID>-snapshot-<uuid>` beside the source, its volume id the snapshot id.
@Suite struct PluginSnapshotTests {
    static let snapshotVolid = "local-lvm:vm-9999-snapshot-8a1c3e52-5a0b-4f0e-9d3c-2b7e6f1a4c90"
    static let snapshotID = "main/pve1/local-lvm/vm-9999-snapshot-8a1c3e52-5a0b-4f0e-9d3c-2b7e6f1a4c90"

    @Test func aVolumeIsRestoredFromOneAndDeletingItFreesItsVolume() async throws {
        let scene = ControllerScene()
        scene.fake.addVolume(Self.snapshotVolid, node: "pve1", owner: 9999, size: 2 << 30)
        let restored = try await scene.restore("pvc-r") { $0.snapshot.snapshotID = Self.snapshotID }
        #expect(restored.capacityBytes == 2 << 30)
        #expect(restored.contentSource.snapshot.snapshotID == Self.snapshotID)
        let imports = scene.fake.writes.compactMap { $0.set["scsi0"] }.filter { $0.contains("import-from=\(Self.snapshotVolid)") }
        #expect(imports.count == 1)

        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = Self.snapshotID }) == nil)
        #expect(scene.fake.volume(Self.snapshotVolid) == nil)
        // The restored volume is its own: it outlives the snapshot.
        #expect(try await scene.publish(restored.volumeID, to: "worker-1")["serial"] != nil)
    }

    /// Only a volume named as the plugin names snapshots is one: a PV's volume id given as a
    /// snapshot id is neither restored from nor deleted.
    @Test func aVolumeIDThatIsNoPluginSnapshotIsNeitherRestoredNorDeleted() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        #expect(await scene.code("CreateVolume", Csi_V1_CreateVolumeRequest.with {
            $0.name = "pvc-r"
            $0.volumeCapabilities = [ControllerScene.mount]
            $0.parameters = ["storage": "local-lvm"]
            $0.volumeContentSource.snapshot.snapshotID = volume.volumeID
        }) == .notFound)
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = volume.volumeID }) == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a") != nil)
    }

    @Test func anAttachedOneIsNotDeleted() async throws {
        let scene = ControllerScene()
        scene.fake.addVolume(Self.snapshotVolid, node: "pve1", owner: 9999)
        scene.fake.touch(100, set: "scsi5", to: Self.snapshotVolid + ",wwn=0x5056432d49443035")
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = Self.snapshotID }) == .failedPrecondition)
        #expect(scene.fake.volume(Self.snapshotVolid) != nil)
    }
}

/// Storage-native snapshots (issue 15) on lvmthin and rbd: a VM snapshot of a stopped
/// source VM that names the volume only while the snapshot is taken.
@Suite struct NativeSnapshotTests {
    func sourceVMs(_ scene: ControllerScene) -> [FakeCluster.VM] {
        scene.fake.state.withLock { $0.vms.values.filter { $0.values["name"]?.hasPrefix("csi-src-") == true } }
    }

    @Test(arguments: ["local-lvm", "ceph"])
    func aSnapshotIsOneStorageSnapshotTakenAtOnceAndAskingAgainAnswersTheSame(storage: String) async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: storage, bytes: 2 << 30)
        let volid = "\(storage):vm-9999-pvc-a"
        let allocations = scene.fake.count(.allocate)
        let snapshot = try await scene.snapshot("snap-1", of: volume.volumeID)
        #expect(snapshot.readyToUse && snapshot.sourceVolumeID == volume.volumeID && snapshot.sizeBytes == 2 << 30)
        #expect(scene.fake.volume(volid)?.snapshots.count == 1)
        #expect(scene.fake.count(.allocate) == allocations, "nothing copied")
        #expect(try await scene.volumes.copyVMs(.snapshot).isEmpty)
        let sources = sourceVMs(scene)
        #expect(sources.count == 1 && sources[0].values["scsi0"] == nil, "the source VM names the volume only while it snapshots")
        #expect(try await scene.snapshot("snap-1", of: volume.volumeID) == snapshot)
        #expect(scene.fake.count(.createSnapshot) == 1)
    }

    @Test func aVolumesFirstSnapshotMakesItsSourceVMNamingTheVolumeAndWritesOnlyToDropIt() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        let (updates, lists) = (scene.fake.count(.update), scene.fake.count(.snapshots))
        _ = try await scene.snapshot("snap-1", of: volume.volumeID)
        // create_vm took scsi0 with the VM; a VM just made has no snapshot to look for.
        #expect(scene.fake.writes.suffix(scene.fake.count(.update) - updates).map(\.delete) == [["scsi0"]])
        #expect(scene.fake.count(.snapshots) == lists)
        #expect(sourceVMs(scene).map { $0.values["scsi0"] } == [nil])
        // The second snapshot of it attaches to the source VM it finds, as before.
        _ = try await scene.snapshot("snap-2", of: volume.volumeID)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a")?.snapshots.count == 2)
        #expect(sourceVMs(scene).map { $0.values["scsi0"] } == [nil])
    }

    @Test func aSnapshotThatFailedRightAfterItsSourceVMWasMadeIsTakenByTheRetry() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        scene.fake.failNext(.createSnapshot, with: .server(status: 500, message: "injected"))
        #expect(await scene.code("CreateSnapshot", Csi_V1_CreateSnapshotRequest.with {
            $0.name = "snap-1"
            $0.sourceVolumeID = volume.volumeID
        }) != nil)
        #expect(sourceVMs(scene).count == 1)
        let snapshot = try await scene.snapshot("snap-1", of: volume.volumeID)
        #expect(snapshot.readyToUse && scene.fake.volume("local-lvm:vm-9999-pvc-a")?.snapshots.count == 1)
        #expect(sourceVMs(scene).count == 1 && sourceVMs(scene)[0].values["scsi0"] == nil)
    }

    @Test func deletingASnapshotReadsItsSourceVMOnce() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        let kept = try await scene.snapshot("s1", of: volume.volumeID)
        let gone = try await scene.snapshot("s2", of: volume.volumeID)
        let (configs, lists) = (scene.fake.count(.config), scene.fake.count(.snapshots))
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = gone.snapshotID }) == nil)
        #expect(scene.fake.count(.config) - configs == 1 && scene.fake.count(.snapshots) - lists == 1)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a")?.snapshots.count == 1 && sourceVMs(scene).count == 1)
        // A snapshot already gone is done, and leaves the other one alone.
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = gone.snapshotID }) == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a")?.snapshots.count == 1 && sourceVMs(scene).count == 1)
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = kept.snapshotID }) == nil)
        #expect(sourceVMs(scene).isEmpty)
    }

    @Test func anAttachedVolumeIsSnapshottedAndStaysAttached() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        let context = try await scene.publish(volume.volumeID, to: "worker-1")
        let snapshot = try await scene.snapshot("snap-1", of: volume.volumeID)
        #expect(snapshot.readyToUse)
        #expect(scene.disks(of: "local-lvm:vm-9999-pvc-a") == ["100:scsi1"])
        #expect(try await scene.publish(volume.volumeID, to: "worker-1") == context)
    }

    @Test func aRestoreIsAFullCloneOfTheSnapshotOwnedByItsRecordVM() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", bytes: 2 << 30)
        let snapshot = try await scene.snapshot("snap-1", of: volume.volumeID)
        let restored = try await scene.restore("pvc-r", bytes: 3 << 30) { $0.snapshot.snapshotID = snapshot.snapshotID }
        #expect(restored.capacityBytes == 3 << 30 && restored.contentSource.snapshot.snapshotID == snapshot.snapshotID)
        let record = try #require(scene.fake.vms(named: CopyVM.vmName(.volume, csiName: "pvc-r")).first)
        #expect(record.values["protection"] == "1" && record.values["scsi0"] == nil && record.values["unused0"] != nil)
        #expect(scene.fake.count(.clone) == 1)
        // Asking again answers the same volume; it is usable like any other, and the source keeps its snapshot.
        #expect(try await scene.restore("pvc-r", bytes: 3 << 30) { $0.snapshot.snapshotID = snapshot.snapshotID }.volumeID == restored.volumeID)
        _ = try await scene.publish(restored.volumeID, to: "worker-1")
        #expect(await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = restored.volumeID }) == .failedPrecondition)
    }

    @Test func aDeletedSourceIsKeptHiddenForItsSnapshotsAndFreedWithTheLast() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        let s1 = try await scene.snapshot("s1", of: volume.volumeID)
        let s2 = try await scene.snapshot("s2", of: volume.volumeID)
        #expect(await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = volume.volumeID }) == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a") != nil)
        let listed: Csi_V1_ListVolumesResponse = try await scene.call("ListVolumes", Csi_V1_ListVolumesRequest())
        #expect(listed.entries.isEmpty, "a deleted volume is not listed")
        #expect(await scene.code("ControllerGetVolume", Csi_V1_ControllerGetVolumeRequest.with { $0.volumeID = volume.volumeID }) == .notFound)
        #expect(await scene.code("ValidateVolumeCapabilities", Csi_V1_ValidateVolumeCapabilitiesRequest.with {
            $0.volumeID = volume.volumeID
            $0.volumeCapabilities = [ControllerScene.mount]
        }) == .notFound)
        #expect(await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = volume.volumeID }) == nil)
        #expect(await scene.code("CreateVolume", Csi_V1_CreateVolumeRequest.with {
            $0.name = "pvc-a"
            $0.volumeCapabilities = [ControllerScene.mount]
            $0.capacityRange.requiredBytes = 1 << 30
            $0.parameters = ["storage": "local-lvm"]
        }) == .alreadyExists)
        // Its snapshots still restore.
        _ = try await scene.restore("pvc-r") { $0.snapshot.snapshotID = s2.snapshotID }
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = s1.snapshotID }) == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a")?.snapshots.count == 1)
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = s2.snapshotID }) == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a") == nil)
        #expect(sourceVMs(scene).isEmpty)
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = s2.snapshotID }) == nil)
    }

    @Test func deletingTheLastSnapshotOfALiveVolumeFreesExactlyItsStorageSnapshot() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        let snapshot = try await scene.snapshot("s1", of: volume.volumeID)
        #expect(await scene.code("DeleteSnapshot", Csi_V1_DeleteSnapshotRequest.with { $0.snapshotID = snapshot.snapshotID }) == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a")?.snapshots.isEmpty == true)
        #expect(sourceVMs(scene).isEmpty)
        #expect(await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = volume.volumeID }) == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a") == nil)
    }

    @Test func aConfigAskingForCopiesGetsCopiesEverywhere() async throws {
        let scene = ControllerScene(profiles: "\ndriver:\n  snapshots: copy\n")
        let volume = try await scene.create("pvc-a")
        _ = try await scene.snapshot("s1", of: volume.volumeID)
        #expect(try await scene.volumes.copyVMs(.snapshot).count == 1)
        #expect(scene.fake.count(.createSnapshot) == 0)
    }

    @Test func aNameTakenByAnotherVolumesSnapshotAlreadyExists() async throws {
        let scene = ControllerScene()
        let a = try await scene.create("pvc-a")
        let b = try await scene.create("pvc-b", storage: "ceph")
        _ = try await scene.snapshot("s1", of: a.volumeID)
        #expect(await scene.code("CreateSnapshot", Csi_V1_CreateSnapshotRequest.with {
            $0.name = "s1"
            $0.sourceVolumeID = b.volumeID
        }) == .alreadyExists)
    }

    /// zfspool snapshots but cannot copy from a snapshot; lvm thick and raw files cannot snapshot;
    /// an attached qcow2 image is never snapshotted under its running QEMU: full copies there.
    @Test(arguments: [("tank", false, false), ("thick", false, false), ("local", false, false),
                      ("qcow2", false, true), ("qcow2", true, false)] as [(String, Bool, Bool)])
    func whereProxmoxCannotSnapshotAndRestoreASnapshotIsACopy(storage: String, attached: Bool, native: Bool) async throws {
        let scene = ControllerScene()
        let volume = storage == "qcow2"
            ? try await scene.create("pvc-a", storage: "local", extra: ["storageFormat": "qcow2"])
            : try await scene.create("pvc-a", storage: storage)
        if attached { _ = try await scene.publish(volume.volumeID, to: "worker-1") }
        _ = try await scene.snapshot("s1", of: volume.volumeID)
        #expect(try await scene.volumes.copyVMs(.snapshot).count == (native ? 0 : 1))
        #expect(scene.fake.count(.createSnapshot) == (native ? 1 : 0))
    }
}
