import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Testing

/// Scans for a volume's holders trust configs the driver's own changes keep up to
/// date, and read again any VM they report before anything is decided on it.
@Suite struct ScanCacheTests {
    func storage(_ scene: Scene) async throws -> StorageRef {
        try #require(try await scene.volumes.storage("main", "ceph"))
    }

    @Test func aScanAfterTheDriversOwnAttachReadsNoConfig() async throws {
        let scene = Scene(cacheSeconds: 0, scanSeconds: 3600)
        let ceph = try await storage(scene)
        let first = scene.volume("pvc-a", storage: "ceph", node: nil)
        let other = scene.volume("pvc-b", storage: "ceph", node: nil)
        _ = try await scene.volumes.attachments(of: first, storage: ceph)  // fills the cache: both VMs read
        _ = try await scene.attach("ceph:\(first.volume)", to: 100)
        let before = scene.fake.count(.pending)
        #expect(try await scene.volumes.attachments(of: other, storage: ceph).isEmpty)
        #expect(scene.fake.count(.pending) == before, "the confirm read of the attach left VM 100's config for scans")
        // The attached volume is found, after one fresh read of the VM holding it.
        let holders = try await scene.volumes.attachments(of: first, storage: ceph)
        #expect(holders.map { $0.0.vmid } == [100])
        #expect(scene.fake.count(.pending) == before + 1)
    }

    @Test func aHolderTheCacheNamesIsReadAgainAndDroppedWhenItLetGo() async throws {
        let scene = Scene(cacheSeconds: 0, scanSeconds: 3600)
        let ceph = try await storage(scene)
        let handle = scene.volume("pvc-a", storage: "ceph", node: nil)
        let slot = try await scene.attach("ceph:\(handle.volume)", to: 101)
        #expect(try await scene.volumes.attachments(of: handle, storage: ceph).map { $0.1 } == [slot])
        // Someone else detaches it behind the driver's back: the cache still has it.
        scene.fake.state.withLock { state in
            state.vms[101]!.values[slot] = nil
            state.vms[101]!.changes += 1
        }
        #expect(try await scene.volumes.attachments(of: handle, storage: ceph).isEmpty)
    }

    @Test func aDiskAnotherToolAttachedIsSeenByScansOnceAnAttachHasReadTheConfig() async throws {
        let scene = Scene(cacheSeconds: 0, scanSeconds: 3600)
        let ceph = try await storage(scene)
        let handle = scene.volume("pvc-a", storage: "ceph", node: nil)
        #expect(try await scene.volumes.attachments(of: handle, storage: ceph).isEmpty)  // VM 100 cached without it
        // proxmox-csi-plugin attached it (a migration): the cache does not know.
        scene.fake.state.withLock { state in
            state.vms[100]!.values["scsi1"] = "ceph:\(handle.volume),wwn=0x5056432d49443031"
            state.vms[100]!.changes += 1
        }
        // The publish of the switch finds it there and writes nothing; what it read is what scans now trust.
        #expect(try await scene.attach("ceph:\(handle.volume)", to: 100) == "scsi1")
        #expect(try await scene.volumes.attachments(of: handle, storage: ceph).map { $0.1 } == ["scsi1"])
    }

    @Test func anAttachAReadOfAMomentAgoSaysIsDoneIsCheckedOnAReadMadeNow() async throws {
        let scene = Scene(cacheSeconds: 0, scanSeconds: 3600)
        let ceph = try await storage(scene)
        let handle = scene.volume("pvc-a", storage: "ceph", node: nil)
        let slot = try await scene.attach("ceph:\(handle.volume)", to: 100)
        _ = try await scene.volumes.attachments(of: handle, storage: ceph)  // a read that shows it attached
        // Another tool detaches it: only a read made now knows.
        scene.fake.state.withLock { state in
            state.vms[100]!.values[slot] = nil
            state.vms[100]!.changes += 1
        }
        let writes = scene.fake.writes.count
        #expect(try await scene.attach("ceph:\(handle.volume)", to: 100) == slot)
        #expect(scene.fake.vm(100)!.values[slot] != nil, "attached again, not answered from the earlier read")
        #expect(scene.fake.writes.count == writes + 1)
    }

    @Test func aDetachRightAfterTheScanThatFoundTheDiskWritesOnThatRead() async throws {
        let scene = Scene(cacheSeconds: 0, scanSeconds: 3600)
        let ceph = try await storage(scene)
        let handle = scene.volume("pvc-a", storage: "ceph", node: nil)
        _ = try await scene.attach("ceph:\(handle.volume)", to: 100)
        let holders = try await scene.volumes.attachments(of: handle, storage: ceph)  // reads VM 100 again
        let (reads, writes) = (scene.fake.count(.pending), scene.fake.writes.count)
        try await scene.volumes.detach("ceph:\(handle.volume)", from: holders[0].0)
        #expect(scene.fake.count(.pending) == reads, "the scan's read gave the write its digest")
        #expect(scene.fake.writes.count == writes + 1 && scene.fake.vm(100)!.values["scsi1"] == nil)
    }

    @Test func aConfigChangedSinceThatReadIsReadAgainAndTheDetachStillHappens() async throws {
        let scene = Scene(cacheSeconds: 0, scanSeconds: 3600)
        let ceph = try await storage(scene)
        let handle = scene.volume("pvc-a", storage: "ceph", node: nil)
        _ = try await scene.attach("ceph:\(handle.volume)", to: 100)
        let holders = try await scene.volumes.attachments(of: handle, storage: ceph)
        scene.fake.touch(100, set: "scsi7", to: "ceph:vm-100-other")  // another tool: the digest moves
        let (reads, writes) = (scene.fake.count(.pending), scene.fake.writes.count)
        try await scene.volumes.detach("ceph:\(handle.volume)", from: holders[0].0)
        #expect(scene.fake.count(.pending) == reads + 1, "refused on the old digest, decided again on a fresh read")
        #expect(scene.fake.writes.count == writes + 1)
        #expect(scene.fake.vm(100)!.values["scsi1"] == nil && scene.fake.vm(100)!.values["scsi7"] == "ceph:vm-100-other")
    }

    @Test func withoutTheCacheEveryScanReadsEveryVM() async throws {
        let scene = Scene(cacheSeconds: 0, scanSeconds: 0)
        let ceph = try await storage(scene)
        let handle = scene.volume("pvc-a", storage: "ceph", node: nil)
        let before = scene.fake.count(.pending)
        _ = try await scene.volumes.attachments(of: handle, storage: ceph)
        _ = try await scene.volumes.attachments(of: handle, storage: ceph)
        #expect(scene.fake.count(.pending) == before + 4)
    }
}

/// CreateSnapshot's name check reads each source VM's snapshots once, not once per snapshot.
@Suite struct SnapshotScanCacheTests {
    @Test func theNameCheckRereadsOnlyWhatTheDriverChanged() async throws {
        let scene = Scene(cacheSeconds: 0, scanSeconds: 3600)
        var taken: [NativeSnapshot] = []
        for name in ["pvc-a", "pvc-b", "pvc-c"] {
            let handle = scene.volume(name)
            taken.append(try await scene.volumes.takeNativeSnapshot("snap-\(name)", of: handle.description, volid: "local-lvm:\(handle.volume)",
                                                                     bytes: 1 << 30, cluster: "main", node: "pve1"))
        }
        #expect(Set(try await scene.volumes.recentNativeSnapshots().map(\.csiName)) == ["snap-pvc-a", "snap-pvc-b", "snap-pvc-c"])
        let before = scene.fake.count(.snapshots)
        _ = try await scene.volumes.recentNativeSnapshots()
        #expect(scene.fake.count(.snapshots) == before, "nothing changed: nothing reread")
        #expect(try await scene.volumes.deleteNativeSnapshot(id: taken[1].id))
        let after = try await scene.volumes.recentNativeSnapshots()
        #expect(Set(after.map(\.csiName)) == ["snap-pvc-a", "snap-pvc-c"])
        // The full listing ListSnapshots uses reads every source VM.
        let listed = scene.fake.count(.snapshots)
        _ = try await scene.volumes.nativeSnapshots()
        #expect(scene.fake.count(.snapshots) - listed == after.count)
    }
}
