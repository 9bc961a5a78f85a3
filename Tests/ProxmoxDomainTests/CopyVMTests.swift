import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Testing

/// Copies held by VMs of the driver's: each step found again after a crash.
@Suite struct CopyVMTests {
    /// A snapshot copy of `pvc-a` (1 GiB on local-lvm, pve1) as `ensureCopyVM` makes it.
    func snapshot(_ scene: Scene, name: String = "snap-1", source: String = "main/pve1/local-lvm/vm-9999-pvc-a",
                  bytes: Int64? = nil) async throws -> CopyVM {
        try await scene.volumes.ensureCopyVM(.snapshot, csiName: name, source: source, cluster: "main", node: "pve1",
                                             storage: "local-lvm", sourceVolid: "local-lvm:vm-9999-pvc-a", bytes: bytes, wait: 5)
    }

    @Test func aCopyIsMadeSettledAndProtected() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshot(scene)
        #expect(copy.settled && !copy.copying)
        #expect(copy.vm.name == CopyVM.vmName(.snapshot, csiName: "snap-1"))
        let vm = try #require(scene.fake.vm(copy.vm.vmid))
        #expect(vm.values["protection"] == "1" && vm.values["scsi0"] == nil && vm.values["unused0"] == copy.volid)
        #expect(scene.fake.volume(copy.volid!)?.owner == copy.vm.vmid)
        #expect(!vm.running)
    }

    @Test func askingAgainFindsTheCopyAndMakesNothing() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let first = try await snapshot(scene)
        let creates = scene.fake.count(.createVM), writes = scene.fake.writes.count
        let second = try await snapshot(scene)
        #expect(first.vm.vmid == second.vm.vmid && first.volid == second.volid)
        #expect(scene.fake.count(.createVM) == creates && scene.fake.writes.count == writes)
    }

    @Test func aCopyForAnotherSourceIsReturnedForTheCallerToRefuse() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        _ = try await snapshot(scene)
        let other = try await snapshot(scene, source: "main/pve1/local-lvm/vm-9999-pvc-b")
        #expect(other.source == "main/pve1/local-lvm/vm-9999-pvc-a")
    }

    /// A controller that died after step 1 (VM, no disk) or 2 (copy, not settled): the next call goes on from there.
    @Test(arguments: [1, 2])
    func aCrashAfterAStepIsTakenUpWhereItStopped(stepsDone: Int) async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let name = CopyVM.vmName(.snapshot, csiName: "snap-1")
        let description = CopyVM.description(.snapshot, csiName: "snap-1", source: "main/pve1/local-lvm/vm-9999-pvc-a", createdAt: 1_700_000_000)
        var config = ["description": description]
        if stepsDone == 2 {
            scene.fake.addVolume("local-lvm:vm-150-disk-0", node: "pve1", owner: 150)
            config["scsi0"] = "local-lvm:vm-150-disk-0"
        }
        scene.fake.addVM(150, node: "pve1", name: name, running: false, config: config)
        let copy = try await snapshot(scene)
        #expect(copy.vm.vmid == 150 && copy.settled && copy.createdAt == 1_700_000_000)
        #expect(scene.fake.count(.createVM) == 0)
        #expect(scene.fake.count(.update) == (stepsDone == 1 ? 2 : 1))
        #expect(scene.fake.volume("local-lvm:vm-150-disk-0")?.owner == 150)
        #expect(scene.fake.volumeCount == 2)  // the source and one copy: no second copy was made
    }

    @Test func aCopyThatOutlastsTheWaitIsReportedCopyingAndFinishesLater() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        scene.fake.state.withLock { $0.slowImports = true }
        let copying = try await snapshot(scene)
        #expect(copying.copying && !copying.settled)
        // While the import runs, asking again neither copies twice nor settles early.
        let still = try await snapshot(scene)
        #expect(still.copying && scene.fake.count(.update) == 1)
        scene.fake.state.withLock { $0.slowImports = false }
        scene.fake.finishImports()
        let done = try await snapshot(scene)
        #expect(done.settled && done.vm.vmid == copying.vm.vmid)
    }

    @Test func anUnnamedVMBeingCreatedByAnotherProcessIsBusy() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        scene.fake.state.withLock { $0.slowCreates = true }
        _ = try? await scene.fake.startCreateVM(node: "pve1", vmid: 160, settings: [("name", "anything")])
        let kind = await domainErrorKind { try await snapshot(scene) }
        #expect(kind == "busy")
        scene.fake.state.withLock { $0.slowCreates = false }
        scene.fake.finishCreates()
        #expect(try await snapshot(scene).settled)
    }

    @Test func aCopyIsGrownToTheSizeAsked() async throws {
        let scene = Scene()
        scene.volume("pvc-a", size: 1 << 30)
        let copy = try await scene.volumes.ensureCopyVM(.volume, csiName: "pvc-b", source: "x", cluster: "main", node: "pve1",
                                                       storage: "local-lvm", sourceVolid: "local-lvm:vm-9999-pvc-a", bytes: 3 << 30, wait: 5)
        #expect(scene.fake.volume(copy.volid!)?.size == 3 << 30)
    }

    @Test func aCopyOfAVanishedSourceFailsAndLeavesOnlyTheEmptyVM() async throws {
        let scene = Scene()
        await #expect(throws: ProxmoxError.self) { try await snapshot(scene) }
        let made = scene.fake.vms(named: CopyVM.vmName(.snapshot, csiName: "snap-1"))
        #expect(made.count == 1 && made[0].values["scsi0"] == nil)
    }

    @Test func destroyingACopyLiftsProtectionAndTakesItsTwinAndItsVolume() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        let copy = try await snapshot(scene)
        // A twin an old crash left: same name and record, another vmid.
        scene.fake.addVM(170, node: "pve2", name: copy.vm.name, running: false,
                         config: ["description": CopyVM.description(.snapshot, csiName: "snap-1", source: copy.source, createdAt: 1)])
        try await scene.volumes.destroy(copy)
        #expect(scene.fake.vm(copy.vm.vmid) == nil && scene.fake.vm(170) == nil)
        #expect(scene.fake.volume(copy.volid!) == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a") != nil)
        try await scene.volumes.destroy(copy)  // already gone: done
    }

    @Test func everyCopyOfAKindIsListed() async throws {
        let scene = Scene()
        scene.volume("pvc-a")
        for name in ["s1", "s2", "s3"] { _ = try await snapshot(scene, name: name) }
        try await scene.volumes.recordOptions(["diskIOPS": "100"], volumeID: "v", cluster: "main", node: "pve1")
        #expect(try await scene.volumes.copyVMs(.snapshot).map(\.csiName).sorted() == ["s1", "s2", "s3"])
        #expect(try await scene.volumes.copyVMs(.options).map(\.csiName) == ["v"])
    }

    @Test func optionsAreRecordedOnceAndMergedAfterwards() async throws {
        let scene = Scene()
        try await scene.volumes.recordOptions(["diskIOPS": "100", "cache": "none"], volumeID: "v", cluster: "main", node: "pve1")
        try await scene.volumes.recordOptions(["diskIOPS": "200"], volumeID: "v", cluster: "main", node: "pve1")
        let recorded = try #require(try await scene.volumes.copyVM(.options, csiName: "v", cluster: "main"))
        #expect(recorded.options == ["diskIOPS": "200", "cache": "none"])
        #expect(scene.fake.vms(named: CopyVM.vmName(.options, csiName: "v")).count == 1)
    }

    @Test(arguments: [
        // the VM's name, its config, what parse reads (nil: not a copy VM)
        ("csi-snap-", ["description": "proxmox-csi snapshot\nname: s\nsource: src\ncreated: 5\n"], "s|src|5|settled:false"),
        ("csi-snap-", ["description": "name: s\nsource: src\ncreated: 5", "unused0": "ceph:vm-1-disk-0"], "s|src|5|settled:true"),
        ("csi-snap-", ["description": "name: s\nsource: src", "scsi0": "ceph:vm-1-disk-0", "lock": "create"], "s|src|0|settled:false"),
        ("csi-snap-", ["description": "name: other\nsource: src"], nil),
        ("csi-snap-", ["description": "source: src"], nil),
        ("csi-snap-", [:], nil),
        ("worker-", ["description": "name: s\nsource: src"], nil),
    ] as [(String, [String: String], String?)])
    func aCopyVMIsReadFromItsNameAndDescription(prefix: String, config: [String: String], expected: String?) {
        let name = prefix == "csi-snap-" ? CopyVM.vmName(.snapshot, csiName: "s") : "worker-1"
        let copy = CopyVM.parse(VMRef(cluster: "main", node: "pve1", vmid: 1, name: name), config: VMConfig(values: config, digest: "d"))
        #expect(copy.map { "\($0.csiName)|\($0.source)|\($0.createdAt)|settled:\($0.settled)" } == expected)
    }

    @Test func recordedOptionsSurviveTheirDescription() {
        let text = CopyVM.description(.options, csiName: "v", source: "v", createdAt: 9, options: ["b": "2", "a": "1"])
        let vm = VMRef(cluster: "main", node: "pve1", vmid: 1, name: CopyVM.vmName(.options, csiName: "v"))
        #expect(CopyVM.parse(vm, config: VMConfig(values: ["description": text], digest: ""))?.options == ["a": "1", "b": "2"])
        #expect(text.contains("options: a=1;b=2\n"))
    }
}

@Suite struct SharedReadTests {
    @Test func concurrentReadsOfAKeyShareOneFetch() async throws {
        let reads = CoalescedReads<String, Int>()
        let fetches = Counter()
        let gate = Gate()
        async let first = reads.read("k", asked: nil) { await fetches.add(); await gate.wait(); return 1 }
        try await Task.sleep(nanoseconds: 20_000_000)
        async let second = reads.read("k", asked: nil) { await fetches.add(); return 2 }
        try await Task.sleep(nanoseconds: 20_000_000)
        await gate.open()
        #expect(try await [first, second] == [1, 1])
        #expect(await fetches.value == 1)
    }

    @Test func readsAskedAfterAFetchStartedShareTheFetchThatFollowsIt() async throws {
        let reads = CoalescedReads<String, Int>()
        let gate = Gate()
        let log = Log()
        async let first = reads.read("k", asked: nil) { await log.add("first"); await gate.wait(); await log.add("first-end"); return 1 }
        try await Task.sleep(nanoseconds: 20_000_000)
        async let second = reads.read("k", asked: ContinuousClock.now) { await log.add("second"); return 2 }
        try await Task.sleep(nanoseconds: 10_000_000)
        async let third = reads.read("k", asked: ContinuousClock.now) { await log.add("third"); return 3 }
        try await Task.sleep(nanoseconds: 20_000_000)
        #expect(await log.entries == ["first"], "no second read while the first is under way")
        await gate.open()
        #expect(try await [first, second, third] == [1, 2, 2])
        #expect(await log.entries == ["first", "first-end", "second"], "one fetch for both, begun after the first ended")
    }

    @Test func operationsOnOneKeyRunOneAtATimeAndOtherKeysDoNotWait() async throws {
        let serializer = KeyedSerializer<String>()
        let log = Log()
        let gate = Gate()
        async let a: Void = serializer.run("vm") { await log.add("a-start"); await gate.wait(); await log.add("a-end") }
        try await Task.sleep(nanoseconds: 20_000_000)
        async let b: Void = serializer.run("vm") { await log.add("b") }
        async let other: Void = serializer.run("other") { await log.add("other") }
        try await other
        try await Task.sleep(nanoseconds: 20_000_000)
        await gate.open()
        _ = try await (a, b)
        #expect(await log.entries == ["a-start", "other", "a-end", "b"])
    }
}

actor Counter {
    var value = 0
    func add() { value += 1 }
}

actor Log {
    var entries: [String] = []
    func add(_ entry: String) { entries.append(entry) }
}
