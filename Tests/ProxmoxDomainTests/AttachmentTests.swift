import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Testing

/// Which slot a volume takes, what one write holds, when Proxmox has really
/// done it: ProxmoxVolumes.attach / detach against the in-memory cluster.
@Suite struct SlotChoiceTests {
    @Test(arguments: [
        // bus, slots already taken (besides the boot disk scsi0 of VM 100), the slot expected
        (DiskBus.scsi, [String](), "scsi1"),
        (.scsi, ["scsi1", "scsi2"], "scsi3"),
        (.scsi, ["scsi1", "scsi3"], "scsi2"),
        (.scsi, (1...29).map { "scsi\($0)" }, "scsi30"),
        (.virtio, [], "virtio0"),
        (.virtio, ["virtio0", "virtio1"], "virtio2"),
        (.virtio, (0...14).map { "virtio\($0)" }, "virtio15"),
    ])
    func aVolumeTakesTheLowestFreeSlotOfItsBus(bus: DiskBus, taken: [String], expected: String) async throws {
        let scene = Scene()
        scene.fake.state.withLock { state in for slot in taken { state.vms[100]!.values[slot] = "local-lvm:vm-100-other-\(slot)" } }
        let handle = scene.volume("pvc-a")
        let slot = try await scene.attach("local-lvm:\(handle.volume)", to: 100, bus: bus)
        #expect(slot == expected)
        #expect(scene.fake.vm(100)!.values[expected] == "local-lvm:\(handle.volume)")
    }

    @Test(arguments: [(DiskBus.scsi, 31), (.virtio, 16)])
    func aBusWithEverySlotTakenIsExhaustedAndNothingIsWritten(bus: DiskBus, count: Int) async throws {
        let scene = Scene()
        scene.fill(100, bus)
        #expect(scene.slots(100, bus).count == count)
        let kind = await domainErrorKind { try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100, bus: bus) }
        #expect(kind == "exhausted")
        #expect(scene.fake.writes.isEmpty)
    }

    @Test func aSlotHeldOnlyByAPendingAttachIsNotFree() async throws {
        let scene = Scene()
        scene.fake.state.withLock { $0.vms[100]!.pending["scsi1"] = "ceph:vm-9999-other" }
        #expect(try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100) == "scsi2")
    }

    @Test func unusedEntriesDoNotTakeASlot() async throws {
        let scene = Scene()
        scene.fake.state.withLock { $0.vms[100]!.values["unused0"] = "local-lvm:vm-100-disk-7" }
        #expect(try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100) == "scsi1")
    }

    @Test func theBootDiskOfAVirtioVMIsNeverReplaced() async throws {
        let scene = Scene()
        scene.fake.addVM(102, node: "pve1", name: "worker-3", config: ["virtio0": "local-lvm:vm-102-disk-0"])
        #expect(try await scene.attach("local-lvm:vm-9999-pvc-a", to: 102, bus: .virtio) == "virtio1")
        #expect(scene.fake.vm(102)!.values["virtio0"] == "local-lvm:vm-102-disk-0")
    }
}

@Suite struct AttachTests {
    @Test func attachingAgainFindsTheSlotAndWritesNothing() async throws {
        let scene = Scene()
        let first = try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100)
        let writes = scene.fake.writes.count
        let second = try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100)
        #expect(first == second)
        #expect(scene.fake.writes.count == writes)
    }

    @Test(arguments: [(false, true), (true, false)])
    func attachingWithTheOtherReadOnlyFlagIsRefused(attachedReadonly: Bool, asked: Bool) async throws {
        let scene = Scene()
        _ = try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100, readonly: attachedReadonly)
        let kind = await domainErrorKind { try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100, readonly: asked) }
        #expect(kind == "exists")
    }

    @Test func anAttachLeftPendingIsSentAgainSoItsHotplugIsRetried() async throws {
        let scene = Scene()
        scene.fake.state.withLock { $0.failingHotplug = [100] }
        // qemu-server raises the hot-plug failure at the task's end: the call fails, the attach stays pending.
        let first = await domainErrorKind { try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100) }
        #expect(first?.contains("hotplug problem") == true)
        #expect(scene.fake.vm(100)!.pending["scsi1"] == "local-lvm:vm-9999-pvc-a")
        scene.fake.state.withLock { $0.failingHotplug = [] }
        #expect(try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100) == "scsi1")
        #expect(scene.fake.writes.last?.set == ["scsi1": "local-lvm:vm-9999-pvc-a"])
        #expect(scene.fake.vm(100)!.pending.isEmpty)
    }

    @Test func anAttachOfADiskWhoseDetachIsPendingRevertsTheDetach() async throws {
        let scene = Scene()
        scene.fake.state.withLock {
            $0.vms[100]!.values["scsi4"] = "local-lvm:vm-9999-pvc-a"
            $0.vms[100]!.pendingDelete = ["scsi4"]
        }
        #expect(try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100) == "scsi4")
        #expect(scene.fake.writes.last?.revert == ["scsi4"])
        #expect(scene.fake.vm(100)!.pendingDelete.isEmpty)
    }

    @Test func aVMWhoseHotplugLeavesOutDiskIsAConflictAndThePendingAttachIsDropped() async throws {
        let scene = Scene()
        scene.fake.touch(100, set: "hotplug", to: "network,usb")
        let kind = await domainErrorKind { try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100) }
        #expect(kind == "conflict")
        #expect(scene.fake.vm(100)!.pending.isEmpty)
        #expect(scene.fake.vm(100)!.values["scsi1"] == nil)
    }

    @Test func aStoppedVMTakesTheDiskAtOnce() async throws {
        let scene = Scene()
        scene.fake.state.withLock { $0.vms[100]!.running = false; $0.failingHotplug = [100] }
        #expect(try await scene.attach("local-lvm:vm-9999-pvc-a", to: 100) == "scsi1")
    }

    @Test func aVMThatMigratedIsFollowedToItsNode() async throws {
        let scene = Scene()
        let stale = scene.vm(100)
        scene.fake.addVolume("ceph:vm-9999-pvc-a", node: nil, owner: 9999)
        scene.fake.migrate(100, to: "pve2")
        let slot = try await scene.volumes.attach("ceph:vm-9999-pvc-a", as: "ceph:vm-9999-pvc-a", readonly: false, bus: .scsi, to: stale).slot
        #expect(slot == "scsi1")
        #expect(scene.fake.vm(100)!.values["scsi1"] == "ceph:vm-9999-pvc-a")
    }

    @Test func aVMThatIsGoneIsNotFound() async throws {
        let scene = Scene()
        let stale = scene.vm(100)
        scene.fake.state.withLock { $0.vms[100] = nil }
        let kind = await domainErrorKind {
            try await scene.volumes.attach("ceph:vm-9999-pvc-a", as: "ceph:vm-9999-pvc-a", readonly: false, bus: .scsi, to: stale)
        }
        #expect(kind == "other: not found: VM 100 is on no node")
    }
}

@Suite struct BatchTests {
    @Test(arguments: [4, 12])
    func concurrentAttachesToOneVMShareWritesAndTakeDistinctSlots(count: Int) async throws {
        let scene = Scene()
        let slots = try await withThrowingTaskGroup(of: String.self) { group in
            for index in 0..<count { group.addTask { try await scene.attach("ceph:vm-9999-pvc-\(index)", to: 100) } }
            var slots: [String] = []
            for try await slot in group { slots.append(slot) }
            return slots
        }
        #expect(Set(slots).count == count)
        #expect(scene.fake.writes.count < count)
        #expect(scene.fake.writes.map(\.set.count).reduce(0, +) == count)
    }

    @Test func aSlotFreedInAWriteIsNotRefilledByTheSameWrite() async throws {
        let scene = Scene()
        scene.fill(100, .scsi, except: ["scsi7"])
        scene.fake.state.withLock { $0.vms[100]!.values["scsi7"] = "ceph:vm-9999-old" }
        let vm = scene.vm(100)
        // The detach and the attach land in one batch: the attach must wait for the next write.
        async let detached: Void = scene.volumes.detach("ceph:vm-9999-old", from: vm)
        async let attached = scene.attach("ceph:vm-9999-new", to: 100)
        _ = try await (detached, attached)
        let writes = scene.fake.writes
        #expect(!writes.contains { $0.delete.contains("scsi7") && $0.set["scsi7"] != nil })
        #expect(scene.fake.vm(100)!.values["scsi7"] == "ceph:vm-9999-new")
    }

    @Test func aDigestConflictMakesTheBatchDecideAgainOnTheNewConfig() async throws {
        let scene = Scene()
        // Someone else takes scsi1 between the driver's read and its write.
        scene.fake.beforeNext(.update) { fake in fake.touch(100, set: "scsi1", to: "local-lvm:vm-100-disk-1") }
        #expect(try await scene.attach("ceph:vm-9999-pvc-a", to: 100) == "scsi2")
        #expect(scene.fake.vm(100)!.values["scsi1"] == "local-lvm:vm-100-disk-1")
    }

    @Test func aConfigThatKeepsChangingFailsAfterFiveAttempts() async throws {
        let scene = Scene()
        scene.fake.failNext(.update, with: .digestConflict("checksum mismatch"), times: ConfigBatches.attempts)
        await #expect(throws: ProxmoxError.digestConflict("checksum mismatch")) { try await scene.attach("ceph:vm-9999-pvc-a", to: 100) }
        #expect(scene.fake.count(.update) == ConfigBatches.attempts)
    }

    @Test func anEditProxmoxRefusesFailsAloneAndTheOthersGoOn() async throws {
        let scene = Scene()
        // The first write (carrying both edits) fails; each is then written alone, and the first of those fails too.
        scene.fake.failNext(.update, with: .invalidParameters(["scsi1": "bad"]), times: 2)
        async let first = domainErrorKind { try await scene.attach("ceph:vm-9999-pvc-a", to: 100) }
        async let second = domainErrorKind { try await scene.attach("ceph:vm-9999-pvc-b", to: 100) }
        let outcomes = await [first, second]
        #expect(outcomes.filter { $0 == nil }.count >= 1)
    }

    @Test func aFailureOfTheVMFailsEveryEditOfTheBatch() async throws {
        let scene = Scene()
        scene.fake.failNext(.pending, with: .vmLocked(vmid: 100, lock: "backup"))
        await #expect(throws: ProxmoxError.vmLocked(vmid: 100, lock: "backup")) { try await scene.attach("ceph:vm-9999-pvc-a", to: 100) }
    }

    @Test(arguments: [
        ([String: String](), ["scsi1": "a"], [("scsi1", "a")], [String]()),
        (["scsi1": "a"], [:], [], ["scsi1"]),
        (["scsi1": "a", "scsi2": "b"], ["scsi1": "a", "scsi2": "c"], [("scsi2", "c")], []),
        (["scsi2": "b", "scsi1": "a"], ["scsi3": "c", "scsi4": "d"], [("scsi3", "c"), ("scsi4", "d")], ["scsi1", "scsi2"]),
    ])
    func aWriteSendsExactlyTheDifference(old: [String: String], new: [String: String], set: [(String, String)], delete: [String]) {
        let difference = ConfigBatches.difference(from: old, to: new)
        #expect(difference.set.map(\.0) == set.map(\.0) && difference.set.map(\.1) == set.map(\.1))
        #expect(difference.delete == delete)
    }
}

@Suite struct DetachTests {
    @Test func detachingTakesTheDiskOutAndAgainIsNothing() async throws {
        let scene = Scene()
        let slot = try await scene.attach("ceph:vm-9999-pvc-a", to: 100)
        try await scene.volumes.detach("ceph:vm-9999-pvc-a", from: scene.vm(100))
        #expect(scene.fake.vm(100)!.values[slot] == nil)
        let writes = scene.fake.writes.count
        try await scene.volumes.detach("ceph:vm-9999-pvc-a", from: scene.vm(100))
        #expect(scene.fake.writes.count == writes)
    }

    @Test func aFailedHotUnplugFailsTheCallAndTheNextCallFinishesIt() async throws {
        let scene = Scene()
        let slot = try await scene.attach("ceph:vm-9999-pvc-a", to: 100)
        scene.fake.state.withLock { $0.failingHotplug = [100] }
        let kind = await domainErrorKind { try await scene.volumes.detach("ceph:vm-9999-pvc-a", from: scene.vm(100)) }
        #expect(kind?.contains("hotplug problem") == true)
        #expect(scene.fake.vm(100)!.pendingDelete == [slot])
        scene.fake.state.withLock { $0.failingHotplug = [] }
        try await scene.volumes.detach("ceph:vm-9999-pvc-a", from: scene.vm(100))
        #expect(scene.fake.vm(100)!.values[slot] == nil && scene.fake.vm(100)!.pendingDelete.isEmpty)
    }

    @Test func aWriteProxmoxReportsDoneIsNotReadAgain() async throws {
        let scene = Scene()
        var before = scene.fake.count(.pending)
        let slot = try await scene.attach("ceph:vm-9999-pvc-a", to: 100)
        #expect(scene.fake.count(.pending) == before + 1, "only the read the write's digest comes from")
        #expect(scene.fake.vm(100)!.values[slot] != nil)
        before = scene.fake.count(.pending)
        try await scene.volumes.detach("ceph:vm-9999-pvc-a", from: scene.vm(100))
        #expect(scene.fake.count(.pending) == before + 1)
        #expect(scene.fake.vm(100)!.values[slot] == nil)
    }

    @Test func aDiskThatIsStillThereAfterAnUncertainWriteIsNotYetDetached() async throws {
        let scene = Scene()
        // The VM's own volume: Proxmox keeps it as unusedN after the detach,
        // which the driver does not model, so it reads the config again.
        _ = try await scene.attach("ceph:vm-100-disk-7", to: 100)
        // Another writer puts it back between the driver's write and that read.
        scene.fake.beforeNext(.update) { fake in
            fake.beforeNext(.pending) { fake in fake.state.withLock { $0.vms[100]!.pending["scsi9"] = "ceph:vm-100-disk-7" } }
        }
        let kind = await domainErrorKind { try await scene.volumes.detach("ceph:vm-100-disk-7", from: scene.vm(100)) }
        #expect(kind == "notYet")
    }

    @Test func aDetachFromAVMWithoutDiskHotplugIsAConflict() async throws {
        let scene = Scene()
        _ = try await scene.attach("ceph:vm-9999-pvc-a", to: 100)
        scene.fake.touch(100, set: "hotplug", to: "0")
        let kind = await domainErrorKind { try await scene.volumes.detach("ceph:vm-9999-pvc-a", from: scene.vm(100)) }
        #expect(kind == "conflict")
    }

    @Test func aDetachFromAVMOnNoNodeIsDone() async throws {
        let scene = Scene()
        let vm = scene.vm(100)
        scene.fake.state.withLock { $0.vms[100] = nil }
        try await scene.volumes.detach("ceph:vm-9999-pvc-a", from: vm)
    }

    @Test func aPendingAttachIsDetachedToo() async throws {
        let scene = Scene()
        scene.fake.state.withLock { $0.vms[100]!.pending["scsi3"] = "ceph:vm-9999-pvc-a" }
        try await scene.volumes.detach("ceph:vm-9999-pvc-a", from: scene.vm(100))
        #expect(scene.fake.vm(100)!.pending["scsi3"] == nil)
    }

    @Test(arguments: [
        (nil as String?, nil as String?), ("1", nil), ("network,disk,usb", nil), ("disk", nil),
        ("0", "0"), ("network,usb", "network,usb"), ("", ""),
    ])
    func hotplugLeavesOutDiskUnlessItNamesIt(hotplug: String?, leftOut: String?) {
        let config = VMConfig(values: hotplug.map { ["hotplug": $0] } ?? [:], digest: "")
        #expect(config.hotplugWithoutDisk == leftOut)
    }
}
