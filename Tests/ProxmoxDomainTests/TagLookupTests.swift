import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Testing

/// The driver finds its own VMs by the tag it gives them: cluster resources show
/// tags as the config has them now, but names only as pvestatd last saw them.
@Suite struct TagLookupTests {
    func snapshotCopy(_ scene: Scene, name: String) async throws -> CopyVM {
        try await scene.volumes.ensureCopyVM(.snapshot, csiName: name, source: "main/pve1/local-lvm/vm-9999-pvc-a", cluster: "main",
                                             node: "pve1", storage: "local-lvm", sourceVolid: "local-lvm:vm-9999-pvc-a", wait: 5)
    }

    /// A restore's clone of `copy` as vmid 90, before it settles: it carries the copy's tag,
    /// and resources show it unnamed (pvestatd has not seen it yet).
    func cloneAt90(_ scene: Scene, of copy: CopyVM, named name: String, description: String? = nil) {
        scene.fake.state.withLock { state in
            var clone = state.vms[copy.vm.vmid]!
            clone.vmid = 90
            clone.values["name"] = name
            if let description { clone.values["description"] = description }
            state.vms[90] = clone
            state.resourceNames[90] = .some(nil)
        }
    }

    @Test func aVMTheDriverMadeIsTaggedWithItsName() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshotCopy(scene, name: "snap-1")
        #expect(scene.fake.vm(copy.vm.vmid)?.values["tags"] == copy.vm.name)
    }

    @Test func onceTaggedALookupReadsResourcesNotEveryNodesList() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshotCopy(scene, name: "snap-1")
        _ = try await scene.volumes.vmsAsConfigured("main")  // the first lookup lists every node once
        let lists = scene.fake.count(.vmList)
        // pvestatd has not seen the copy's name yet: resources show it unnamed.
        scene.fake.state.withLock { $0.resourceNames[copy.vm.vmid] = .some(nil) }
        let found = try await scene.volumes.copyVM(.snapshot, csiName: "snap-1", cluster: "main")
        #expect(found?.vm.vmid == copy.vm.vmid)
        #expect(scene.fake.count(.vmList) == lists, "found by its tag, without a node's VM list")
    }

    @Test func aVMAnEarlierVersionMadeWithoutATagIsTaggedByTheFirstLookup() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshotCopy(scene, name: "snap-1")
        scene.fake.state.withLock { $0.vms[copy.vm.vmid]!.values["tags"] = "backup" }  // as an older driver left it, with a user's tag
        let other = ProxmoxVolumes(clusters: [("main", scene.fake)], ownerVMID: 9999, taskTimeout: 60)  // a new process
        #expect(try await other.copyVM(.snapshot, csiName: "snap-1", cluster: "main")?.vm.vmid == copy.vm.vmid)
        #expect(scene.fake.vm(copy.vm.vmid)?.values["tags"] == "backup;\(copy.vm.name)")
        let lists = scene.fake.count(.vmList)
        _ = try await other.copyVM(.snapshot, csiName: "snap-1", cluster: "main")
        #expect(scene.fake.count(.vmList) == lists)
    }

    @Test func aVMCarryingAnotherDriverVMsTagIsKnownByItsConfigsName() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshotCopy(scene, name: "snap-1")
        _ = try await scene.volumes.vmsAsConfigured("main")
        // A clone of it (a restore before it settles) carries its tag, and has the lower vmid.
        cloneAt90(scene, of: copy, named: "csi-vol-000000000000000000000000",
                  description: "proxmox-csi volume\nname: pvc-r\nsource: x\ncreated: 1\n")
        let named = try await scene.volumes.vmsByCurrentNames("main")
        #expect(named.first { $0.vmid == 90 }?.name == "csi-vol-000000000000000000000000")
        // Its name is read once while its tags stay; a new tag has it read again.
        var reads = scene.fake.count(.config)
        _ = try await scene.volumes.vmsByCurrentNames("main")
        #expect(scene.fake.count(.config) == reads)
        scene.fake.state.withLock { $0.vms[90]!.values["tags"] = "csi-vol-000000000000000000000000;x" }
        reads = scene.fake.count(.config)
        _ = try await scene.volumes.vmsByCurrentNames("main")
        #expect(scene.fake.count(.config) == reads + 1)
        #expect(try await scene.volumes.copyVM(.snapshot, csiName: "snap-1", cluster: "main")?.vm.vmid == copy.vm.vmid)
    }

    @Test func concurrentLookupsThatSeeAVMAlikeReadItsNameOnce() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshotCopy(scene, name: "snap-1")
        _ = try await scene.volumes.vmsAsConfigured("main")
        // A restore's clone, still carrying its source's tag: each lookup must learn its name.
        cloneAt90(scene, of: copy, named: "csi-vol-000000000000000000000000")
        scene.fake.state.withLock { $0.configLatency = .milliseconds(200) }
        let reads = scene.fake.count(.config)
        let names = try await withThrowingTaskGroup(of: String?.self) { group in
            for _ in 0..<6 { group.addTask { try await scene.volumes.vmsByCurrentNames("main").first { $0.vmid == 90 }?.name } }
            return try await group.reduce(into: [String?]()) { $0.append($1) }
        }
        #expect(names == Array(repeating: "csi-vol-000000000000000000000000", count: 6))
        // One read, or two when a lookup slowed by a busy machine came after the first had ended.
        #expect(scene.fake.count(.config) - reads <= 2, "six lookups, \(scene.fake.count(.config) - reads) reads")
    }

    @Test func aVMThatMigratedSinceTheListingIsFoundOnItsNewNode() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshotCopy(scene, name: "snap-1")
        let listed = try await scene.volumes.vmsAsConfigured("main")
        #expect(listed.first { $0.vmid == copy.vm.vmid }?.node == "pve1")
        // The move's record VM reached pve2 after the listing (qemu-server: not found on pve1 now).
        scene.fake.migrate(copy.vm.vmid, to: "pve2")
        let found = try await scene.volumes.copyVM(.snapshot, csiName: "snap-1", among: listed)
        #expect(found?.vm.vmid == copy.vm.vmid && found?.vm.node == "pve2", "a copy missed here is made a second time")
    }

    @Test func aVMIDTheDriverReusesIsReadForItsNameAgain() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshotCopy(scene, name: "snap-1")
        _ = try await scene.volumes.vmsAsConfigured("main")
        cloneAt90(scene, of: copy, named: "csi-vol-aaaaaaaaaaaaaaaaaaaaaaaa")
        #expect(try await scene.volumes.vmsByCurrentNames("main").first { $0.vmid == 90 }?.name == "csi-vol-aaaaaaaaaaaaaaaaaaaaaaaa")
        // A failed restore's clone is destroyed and the next try gets vmid 90 again, alike in node, lock and tags.
        scene.volumes.forgetName(cluster: "main", vmid: 90)
        cloneAt90(scene, of: copy, named: "csi-vol-bbbbbbbbbbbbbbbbbbbbbbbb")
        #expect(try await scene.volumes.vmsByCurrentNames("main").first { $0.vmid == 90 }?.name == "csi-vol-bbbbbbbbbbbbbbbbbbbbbbbb")
    }

    @Test func aVMThisProcessMadeIsKnownByNameBeforePvestatdNamesItWithoutAConfigRead() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshotCopy(scene, name: "snap-1")
        scene.fake.state.withLock { $0.resourceNames[copy.vm.vmid] = .some(nil) }
        let reads = scene.fake.count(.config)
        #expect(try await scene.volumes.vmsByCurrentNames("main").first { $0.vmid == copy.vm.vmid }?.name == copy.vm.name)
        #expect(scene.fake.count(.config) == reads, "the name this process gave it, as a read would answer it")
        // Another process did not make it: it reads the config, once.
        let other = ProxmoxVolumes(clusters: [("main", scene.fake)], ownerVMID: 9999, taskTimeout: 60)
        #expect(try await other.vmsByCurrentNames("main").first { $0.vmid == copy.vm.vmid }?.name == copy.vm.name)
        #expect(scene.fake.count(.config) == reads + 1)
    }

    @Test func aNameThisProcessGaveCountsOnlyWhileTheVMStaysAsItMadeIt() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshotCopy(scene, name: "snap-1")
        scene.fake.state.withLock { $0.resourceNames[copy.vm.vmid] = .some(nil) }
        // Someone else retagged and renamed it since: the tags tell, and the config is read.
        scene.fake.state.withLock { state in
            state.vms[copy.vm.vmid]!.values["tags"] = "\(copy.vm.name);kept"
            state.vms[copy.vm.vmid]!.values["name"] = "renamed"
        }
        let reads = scene.fake.count(.config)
        #expect(try await scene.volumes.vmsByCurrentNames("main").first { $0.vmid == copy.vm.vmid }?.name == "renamed")
        #expect(scene.fake.count(.config) == reads + 1)
    }

    @Test func aVMJustCreatedIsKnownByTheNameItWasCreatedWith() async throws {
        let scene = Scene()
        let name = SourceVM.prefix + "aaaaaaaaaaaaaaaaaaaaaaaa"
        let vmid = try await scene.volumes.createVM(cluster: "main", node: "pve1", name: name, description: "", what: "a source VM")
        scene.fake.state.withLock { $0.resourceNames[vmid] = .some(nil) }
        let reads = scene.fake.count(.config)
        #expect(try await scene.volumes.vmsByCurrentNames("main").first { $0.vmid == vmid }?.name == name)
        #expect(scene.fake.count(.config) == reads)
    }

    @Test func aGivenNameIsDroppedOncePvestatdNamedTheVMSoAReusedVMIDIsReadAgain() async throws {
        let scene = Scene()
        let name = SourceVM.prefix + "aaaaaaaaaaaaaaaaaaaaaaaa"
        let vmid = try await scene.volumes.createVM(cluster: "main", node: "pve1", name: name, description: "", what: "a source VM")
        #expect(try await scene.volumes.vmsByCurrentNames("main").first { $0.vmid == vmid }?.name == name)  // named in resources
        // Another controller replica destroyed it and cloned a restore into the same vmid, which
        // carries the source's tag until it settles; pvestatd has not named it yet.
        scene.fake.state.withLock { state in
            state.vms[vmid]!.values["name"] = "csi-vol-bbbbbbbbbbbbbbbbbbbbbbbb"
            state.resourceNames[vmid] = .some(nil)
        }
        #expect(try await scene.volumes.vmsByCurrentNames("main").first { $0.vmid == vmid }?.name == "csi-vol-bbbbbbbbbbbbbbbbbbbbbbbb")
    }

    @Test func aHolderMadeAMomentAgoIsNotMadeAgainBeforePvestatdNamesIt() async throws {
        let scene = Scene()
        let holder = try await scene.volumes.holder(cluster: "main", node: "pve1")
        scene.fake.state.withLock { $0.resourceNames[holder.vmid] = .some(nil) }
        #expect(try await scene.volumes.holder(cluster: "main", node: "pve1").vmid == holder.vmid)
        // A new process finds it by its tag and a read of its config.
        let other = ProxmoxVolumes(clusters: [("main", scene.fake)], ownerVMID: 9999, taskTimeout: 60)
        #expect(try await other.holder(cluster: "main", node: "pve1").vmid == holder.vmid)
        #expect(scene.fake.count(.createVM) == 1)
    }
}

