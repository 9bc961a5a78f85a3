import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Testing

/// Finding VMs and volumes, creating the driver's own VMs, and the holder.
@Suite struct NodeVMTests {
    @Test(arguments: [
        ("worker-1", 100), ("101", 101), ("main/worker-2", 101), ("main/100", 100),
    ])
    func aNodeIDNamesAVMByNameOrVmidWithOrWithoutItsCluster(nodeID: String, vmid: Int) async throws {
        let scene = Scene()
        #expect(try await scene.volumes.vm(forNodeID: nodeID)?.vmid == vmid)
    }

    @Test(arguments: ["worker-9", "other/worker-1", "555"])
    func aNodeIDThatNamesNoVMIsNil(nodeID: String) async throws {
        #expect(try await Scene().volumes.vm(forNodeID: nodeID) == nil)
    }

    @Test func twoVMsWithTheNodesNameAreAConflictNamingBoth() async throws {
        let scene = Scene()
        scene.fake.addVM(102, node: "pve2", name: "worker-1")
        await #expect(throws: DomainError.self) { try await scene.volumes.vm(forNodeID: "worker-1") }
        do {
            _ = try await scene.volumes.vm(forNodeID: "worker-1")
        } catch let error as DomainError {
            #expect(error.kind == "conflict" && error.description.contains("100, 102"))
        }
    }

    @Test func aTemplateIsNeverANode() async throws {
        let scene = Scene()
        scene.fake.addVM(102, node: "pve1", name: "worker-3", running: false, template: true)
        #expect(try await scene.volumes.vm(forNodeID: "worker-3") == nil)
    }

    @Test func aVMMissingFromTheCachedListingIsLookedUpAfresh() async throws {
        let scene = Scene(cacheSeconds: 3600)
        _ = try await scene.volumes.vms("main")
        scene.fake.addVM(102, node: "pve2", name: "worker-3")
        #expect(try await scene.volumes.vm(forNodeID: "worker-3")?.vmid == 102)
    }
}

@Suite struct LocateTests {
    @Test(arguments: ["", "main/pve1/local-lvm", "other/pve1/local-lvm/vm-9999-a", "main/pve1/nowhere/vm-9999-a", "main/pve1/Bad:Id/x"])
    func anIDTheDriverCannotHaveMadeNamesNothing(id: String) async throws {
        #expect(try await Scene().volumes.locate(id) == nil)
    }

    @Test func aVolumeOwnedByAnotherVMIsNeverTheDrivers() async throws {
        let scene = Scene()
        #expect(try await scene.volumes.locate("main/pve1/local-lvm/vm-100-disk-0") == nil)
    }

    @Test func aVolumeOwnedByARecordVMIsTheDrivers() async throws {
        let scene = Scene()
        scene.fake.addVM(120, node: "pve1", name: "csi-vol-abc", running: false)
        #expect(try await scene.volumes.locate("main/pve1/local-lvm/vm-120-disk-0")?.handle.ownerVMID == 120)
    }

    @Test func existingGivesTheSizeAndNilOnceDeleted() async throws {
        let scene = Scene()
        let handle = scene.volume("pvc-a", size: 5 << 30)
        #expect(try await scene.volumes.existing(handle.description)?.size == 5 << 30)
        let storage = try #require(try await scene.volumes.storage("main", "local-lvm"))
        try await scene.volumes.delete(handle, storage: storage)
        #expect(try await scene.volumes.existing(handle.description) == nil)
        try await scene.volumes.delete(handle, storage: storage)  // already gone: done
    }

    @Test func aLocalVolumeOnAnotherNodeIsNotFoundOnThisOne() async throws {
        let scene = Scene()
        let handle = scene.volume("pvc-a", node: "pve1")
        let elsewhere = VolumeHandle(cluster: "main", node: "pve2", storage: "local-lvm", volume: handle.volume)
        #expect(try await scene.volumes.existing(elsewhere.description) == nil)
    }

    @Test func aSharedStoragesNodeIsTheFirstByName() async throws {
        let scene = Scene()
        let storage = try #require(try await scene.volumes.storage("main", "ceph"))
        #expect(storage.shared && storage.anyNode == "pve1")
        #expect(storage.node(for: VolumeHandle(cluster: "main", node: nil, storage: "ceph", volume: "v")) == "pve1")
    }

    @Test func attachmentsLeaveOutCopyVMsAndTheOwner() async throws {
        let scene = Scene()
        let handle = scene.volume("pvc-a", storage: "ceph", node: nil)
        let volid = "ceph:\(handle.volume)"
        scene.fake.addVM(130, node: "pve1", name: "csi-snap-xyz", running: false, config: ["scsi0": volid])
        scene.fake.addVM(131, node: "pve2", name: "app", config: ["virtio3": volid + ",ro=1"])
        _ = try await scene.attach(volid, to: 100)
        let storage = try #require(try await scene.volumes.storage("main", "ceph"))
        let found = try await scene.volumes.attachments(of: handle, storage: storage).map { "\($0.0.vmid):\($0.1)" }
        #expect(found == ["100:scsi1", "131:virtio3"])
    }

    @Test func aScanSeesTheDriversOwnChangeAtOnceEvenWithACache() async throws {
        let scene = Scene(cacheSeconds: 3600)
        let handle = scene.volume("pvc-a", storage: "ceph", node: nil)
        let storage = try #require(try await scene.volumes.storage("main", "ceph"))
        #expect(try await scene.volumes.attachments(of: handle, storage: storage).isEmpty)
        _ = try await scene.attach("ceph:\(handle.volume)", to: 100)
        #expect(try await scene.volumes.attachments(of: handle, storage: storage).count == 1)
        // A change by someone else is seen once the cache ages out, not before.
        scene.fake.touch(101, set: "scsi5", to: "ceph:\(handle.volume)")
        #expect(try await scene.volumes.attachments(of: handle, storage: storage).count == 1)
    }

    @Test func aVMDeletedDuringAScanIsLeftOut() async throws {
        let scene = Scene()
        let handle = scene.volume("pvc-a", storage: "ceph", node: nil)
        let storage = try #require(try await scene.volumes.storage("main", "ceph"))
        _ = try await scene.volumes.vms("main")
        scene.fake.beforeNext(.pending) { fake in fake.state.withLock { $0.vms[101] = nil } }
        #expect(try await scene.volumes.attachments(of: handle, storage: storage).isEmpty)
    }

    @Test(arguments: [
        ("scsi1", true), ("virtio15", true), ("sata0", true), ("ide2", true), ("unused3", true),
        ("scsihw", false), ("net0", false), ("efidisk0", false), ("name", false),
    ])
    func diskKeysAreTheDriveAndUnusedKeys(key: String, isDisk: Bool) {
        #expect(ProxmoxVolumes.isDiskKey(key) == isDisk)
    }
}

@Suite struct VMCreationTests {
    @Test func aVmidTakenBetweenNextidAndCreateIsAskedAgain() async throws {
        let scene = Scene()
        // Another tool creates VM 102 just before the driver's create of the vmid nextid answered.
        scene.fake.beforeNext(.createVM) { fake in fake.addVM(102, node: "pve2", name: "someone-else") }
        let vmid = try await scene.volumes.createVM(cluster: "main", node: "pve1", name: "csi-vol-x", description: "d", what: "x")
        #expect(vmid == 103)
        #expect(scene.fake.vm(103)?.values["name"] == "csi-vol-x")
        #expect(scene.fake.count(.nextID) == 2)
    }

    @Test func vmidsThatKeepBeingTakenAreNotYet() async throws {
        let scene = Scene()
        scene.fake.failNext(.createVM, with: .server(status: 500, message: "unable to create VM 102 - VM 102 already exists"), times: 5)
        let kind = await domainErrorKind { try await scene.volumes.createVM(cluster: "main", node: "pve1", name: "n", description: "d", what: "x") }
        #expect(kind == "notYet")
    }

    @Test func anotherCreateFailureIsPassedOn() async throws {
        let scene = Scene()
        scene.fake.failNext(.createVM, with: .permissionDenied(path: "/vms/102", privilege: "VM.Allocate", message: "no"))
        await #expect(throws: ProxmoxError.self) { try await scene.volumes.createVM(cluster: "main", node: "pve1", name: "n", description: "d", what: "x") }
        #expect(scene.volumes.creating.withLock { $0.isEmpty })
    }

    @Test func concurrentCreatesGetDistinctVmids() async throws {
        let scene = Scene()
        let vmids = try await withThrowingTaskGroup(of: Int.self) { group in
            for index in 0..<6 {
                group.addTask { try await scene.volumes.createVM(cluster: "main", node: "pve1", name: "n\(index)", description: "d", what: "x") }
            }
            var vmids: [Int] = []
            for try await vmid in group { vmids.append(vmid) }
            return vmids
        }
        #expect(Set(vmids) == Set(102...107))
    }

    @Test func anUnknownClusterIsNotFound() async throws {
        let kind = await domainErrorKind { try Scene().volumes.client("elsewhere") }
        #expect(kind == "notFound")
    }
}

@Suite struct HolderTests {
    @Test func theHolderIsCreatedOnceAndCarriesTheVolumeOnlyDuringTheOperation() async throws {
        let scene = Scene()
        let handle = scene.volume("pvc-a")
        let storage = try #require(try await scene.volumes.storage("main", "local-lvm"))
        let seen = try await scene.volumes.withHolder(handle, storage: storage, node: "pve1") { holder, key in
            (holder.name, key, scene.fake.vm(holder.vmid)!.values[key])
        }
        #expect(seen.0 == "proxmox-csi-holder-pve1" && seen.1 == "scsi0" && seen.2 == "local-lvm:\(handle.volume)")
        let holders = scene.fake.vms(named: "proxmox-csi-holder-pve1")
        #expect(holders.count == 1 && holders[0].values["scsi0"] == nil && !holders[0].running)
        _ = try await scene.volumes.withHolder(handle, storage: storage, node: "pve1") { _, _ in 0 }
        #expect(scene.fake.vms(named: "proxmox-csi-holder-pve1").count == 1)
    }

    @Test func theVolumeLeavesTheHolderWhenTheOperationFails() async throws {
        let scene = Scene()
        let handle = scene.volume("pvc-a")
        let storage = try #require(try await scene.volumes.storage("main", "local-lvm"))
        struct Failed: Error {}
        await #expect(throws: Failed.self) {
            try await scene.volumes.withHolder(handle, storage: storage, node: "pve1") { _, _ in throw Failed() }
        }
        #expect(scene.fake.vms(named: "proxmox-csi-holder-pve1")[0].values["scsi0"] == nil)
    }

    @Test func aVolumeLeftOnAHolderByACrashIsUsedWhereItIs() async throws {
        let scene = Scene()
        let handle = scene.volume("pvc-a")
        scene.fake.addVM(140, node: "pve1", name: "proxmox-csi-holder-pve1", running: false, config: ["scsi3": "local-lvm:\(handle.volume)"])
        let storage = try #require(try await scene.volumes.storage("main", "local-lvm"))
        let key = try await scene.volumes.withHolder(handle, storage: storage, node: "pve1") { _, key in key }
        #expect(key == "scsi3")
        #expect(scene.fake.vm(140)!.values["scsi3"] == nil)
    }

    @Test func releasingFromHoldersKeepsEveryOtherAttachment() async throws {
        let scene = Scene()
        let handle = scene.volume("pvc-a")
        let volid = "local-lvm:\(handle.volume)"
        scene.fake.addVM(140, node: "pve1", name: "proxmox-csi-holder-pve1", running: false, config: ["scsi0": volid])
        _ = try await scene.attach(volid, to: 100)
        let storage = try #require(try await scene.volumes.storage("main", "local-lvm"))
        let remaining = try await scene.volumes.releaseFromHolders(handle, storage: storage,
                                                                   attachments: scene.volumes.attachments(of: handle, storage: storage))
        #expect(remaining.map(\.0.vmid) == [100])
        #expect(scene.fake.vm(140)!.values["scsi0"] == nil)
    }
}
