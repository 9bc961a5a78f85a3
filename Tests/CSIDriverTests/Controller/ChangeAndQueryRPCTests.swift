@testable import CSIDriver
import CSIProto
import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Testing
import UnaryGRPC

/// ControllerExpand, ControllerModify, ControllerGetVolume, ListVolumes, GetCapacity, ValidateVolumeCapabilities.
@Suite struct ExpandTests {
    func expand(_ scene: ControllerScene, _ id: String, to bytes: Int64, limit: Int64 = 0,
                block: Bool = false) async throws(RPCError) -> Csi_V1_ControllerExpandVolumeResponse {
        try await scene.call("ControllerExpandVolume", Csi_V1_ControllerExpandVolumeRequest.with {
            $0.volumeID = id
            $0.capacityRange.requiredBytes = bytes
            $0.capacityRange.limitBytes = limit
            $0.volumeCapability = block ? ControllerScene.block : ControllerScene.mount
        })
    }

    @Test func anAttachedVolumeGrowsThroughItsVM() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        _ = try await scene.publish(volume.volumeID, to: "worker-2")
        let response = try await expand(scene, volume.volumeID, to: 3 << 30)
        #expect(response.capacityBytes == 3 << 30 && response.nodeExpansionRequired)
        #expect(scene.fake.volume("ceph:vm-9999-pvc-a")?.size == 3 << 30)
        #expect(scene.fake.vms(named: "proxmox-csi-holder-pve1").isEmpty)
    }

    @Test func aVolumeAnotherToolAttachedSinceTheLastScanGrowsThroughItsVM() async throws {
        let scene = ControllerScene(scanSeconds: 3600)
        let volume = try await scene.create("pvc-a", storage: "ceph")
        let _: Csi_V1_ControllerGetVolumeResponse = try await scene.call("ControllerGetVolume",
                                                                         Csi_V1_ControllerGetVolumeRequest.with { $0.volumeID = volume.volumeID })
        // proxmox-csi-plugin attaches it (the switch of a migration): the scans read before do not hold it.
        scene.fake.touch(101, set: "scsi5", to: "ceph:vm-9999-pvc-a,wwn=0x5056432d49443035")
        _ = try await expand(scene, volume.volumeID, to: 3 << 30)
        #expect(scene.fake.vms(named: "proxmox-csi-holder-pve2").isEmpty && scene.fake.vms(named: "proxmox-csi-holder-pve1").isEmpty,
                "grown offline, the running VM would never see the new size")
        #expect(scene.fake.volume("ceph:vm-9999-pvc-a")?.size == 3 << 30)
    }

    @Test func aDetachedVolumeGrowsThroughTheHolderAndLeavesIt() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        let response = try await expand(scene, volume.volumeID, to: 2 << 30, block: true)
        #expect(response.capacityBytes == 2 << 30 && !response.nodeExpansionRequired)
        let node = volume.volumeID.split(separator: "/")[1]
        let holder = try #require(scene.fake.vms(named: "proxmox-csi-holder-\(node)").first)
        #expect(holder.values["scsi0"] == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a")?.size == 2 << 30)
    }

    @Test func aVolumeAlreadyThatLargeIsAnsweredWithoutAResize() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", bytes: 2 << 30)
        #expect(try await expand(scene, volume.volumeID, to: 1 << 30).capacityBytes == 2 << 30)
        #expect(scene.fake.count(.resize) == 0)
    }

    @Test(arguments: [
        ("larger than the limit", StatusCode.outOfRange),
        ("more than the storage has", .outOfRange),
        ("no such volume", .notFound),
        ("no capacity range", .invalidArgument),
        ("no volume id", .invalidArgument),
    ])
    func anExpandThatCannotBeDoneHasItsCode(problem: String, code: StatusCode) async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", bytes: 2 << 30)
        var request = Csi_V1_ControllerExpandVolumeRequest.with {
            $0.volumeID = volume.volumeID
            $0.capacityRange.requiredBytes = 3 << 30
        }
        switch problem {
        case "larger than the limit": request.capacityRange = .with { $0.requiredBytes = 1 << 30; $0.limitBytes = 1 << 30 }
        case "more than the storage has": request.capacityRange.requiredBytes = 500 << 30
        case "no such volume": request.volumeID = "main/pve1/local-lvm/vm-9999-gone"
        case "no capacity range": request.clearCapacityRange()
        default: request.volumeID = ""
        }
        #expect(await scene.code("ControllerExpandVolume", request) == code)
        #expect(scene.fake.count(.resize) == 0)
    }
}

@Suite struct ModifyTests {
    @Test func newOptionsAreRecordedAndAppliedToTheAttachedDisk() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph", extra: ["ssd": "true"])
        _ = try await scene.publish(volume.volumeID, to: "worker-1", context: volume.volumeContext)
        let _: Csi_V1_ControllerModifyVolumeResponse = try await scene.call("ControllerModifyVolume", Csi_V1_ControllerModifyVolumeRequest.with {
            $0.volumeID = volume.volumeID
            $0.mutableParameters = ["diskIOPS": "700", "cache": "none"]
        })
        let line = try #require(scene.fake.vm(100)!.values["scsi1"])
        #expect(line.hasPrefix("ceph:vm-9999-pvc-a,serial=") && line.contains("ssd=1") && line.contains("iops_rd=700") && line.contains("cache=none"))
        let recorded = try await scene.volumes.copyVM(.options, csiName: volume.volumeID, cluster: "main")
        #expect(recorded?.options == ["diskIOPS": "700", "cache": "none"])
    }

    /// A live change and a later attach give the disk the same options: the class's (defaults
    /// included) with the modified ones in their place, each once.
    @Test func aLiveChangeGivesTheOptionsALaterAttachGives() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph", extra: ["ssd": "true", "backup": "true", "diskMBps": "100"])
        _ = try await scene.publish(volume.volumeID, to: "worker-1", context: volume.volumeContext)
        let _: Csi_V1_ControllerModifyVolumeResponse = try await scene.call("ControllerModifyVolume", Csi_V1_ControllerModifyVolumeRequest.with {
            $0.volumeID = volume.volumeID
            $0.mutableParameters = ["diskIOPS": "700"]
        })
        func options() throws -> [String] {
            try #require(scene.fake.vm(100)!.values["scsi1"]).split(separator: ",").dropFirst().map(String.init).sorted()
        }
        let live = try options()
        #expect(live.contains("backup=1") && live.contains("iothread=1") && live.contains("mbps_rd=100") && live.contains("iops_wr=700"))
        try await scene.unpublish(volume.volumeID, from: "worker-1")
        _ = try await scene.publish(volume.volumeID, to: "worker-1", context: volume.volumeContext)
        #expect(try options() == live)
    }

    @Test(arguments: [
        (["diskIOPS": "700"], "main//ceph/vm-9999-gone", StatusCode.notFound),
        ([:], "main//ceph/vm-9999-pvc-a", .invalidArgument),
        (["storage": "local-lvm"], "main//ceph/vm-9999-pvc-a", .invalidArgument),
        (["diskIOPS": "fast"], "main//ceph/vm-9999-pvc-a", .invalidArgument),
        (["diskIOPS": "700"], "", .invalidArgument),
    ] as [([String: String], String, StatusCode)])
    func aModifyThatCannotBeDoneHasItsCode(parameters: [String: String], volumeID: String, code: StatusCode) async throws {
        let scene = ControllerScene()
        _ = try await scene.create("pvc-a", storage: "ceph")
        #expect(await scene.code("ControllerModifyVolume", Csi_V1_ControllerModifyVolumeRequest.with {
            $0.volumeID = volumeID
            $0.mutableParameters = parameters
        }) == code)
        #expect(try await scene.volumes.copyVMs(.options).isEmpty)
    }
}

@Suite struct GetVolumeTests {
    @Test(arguments: [
        ("not attached", false, [String]()),
        ("attached to VM 100 as scsi1", false, ["worker-1"]),
        ("attached to 2 VMs at once", true, ["worker-1", "worker-2"]),
        ("still on holder VM 140", true, []),
    ] as [(String, Bool, [String])])
    func theConditionSaysWhereTheVolumeIs(message: String, abnormal: Bool, published: [String]) async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        if !published.isEmpty { _ = try await scene.publish(volume.volumeID, to: "worker-1") }
        if published.count > 1 { scene.fake.touch(101, set: "scsi3", to: "ceph:vm-9999-pvc-a") }
        if message.contains("holder") {
            scene.fake.addVM(140, node: "pve1", name: "proxmox-csi-holder-pve1", running: false, config: ["scsi0": "ceph:vm-9999-pvc-a"])
        }
        let response: Csi_V1_ControllerGetVolumeResponse = try await scene.call("ControllerGetVolume",
                                                                                Csi_V1_ControllerGetVolumeRequest.with { $0.volumeID = volume.volumeID })
        #expect(response.volume.volumeID == volume.volumeID && response.volume.capacityBytes == volume.capacityBytes)
        #expect(response.status.volumeCondition.abnormal == abnormal)
        #expect(response.status.volumeCondition.message.hasPrefix(message))
        #expect(response.status.publishedNodeIds == published)
    }

    @Test(arguments: [("main//ceph/vm-9999-gone", StatusCode.notFound), ("", .invalidArgument)])
    func aVolumeThatIsNotThereHasItsCode(volumeID: String, code: StatusCode) async {
        #expect(await ControllerScene().code("ControllerGetVolume", Csi_V1_ControllerGetVolumeRequest.with { $0.volumeID = volumeID }) == code)
    }
}

@Suite struct ListAndCapacityTests {
    func list(_ scene: ControllerScene, max: Int32 = 0, token: String = "") async throws(RPCError) -> Csi_V1_ListVolumesResponse {
        try await scene.call("ListVolumes", Csi_V1_ListVolumesRequest.with {
            $0.maxEntries = max
            $0.startingToken = token
        })
    }

    @Test func everyVolumeOfTheDriverIsListedSortedWithItsNodesAndOnlyOnce() async throws {
        let scene = ControllerScene()
        let a = try await scene.create("pvc-a", storage: "ceph")
        let b = try await scene.create("pvc-b")
        let c = try await scene.create("pvc-c", storage: "local")
        scene.fake.addVolume("local-lvm:vm-100-disk-1", node: "pve1", owner: 100)
        _ = try await scene.publish(a.volumeID, to: "worker-2")
        let clone = try await scene.restore("pvc-d", storage: "ceph") { $0.volume.volumeID = a.volumeID }
        let entries = try await list(scene).entries
        #expect(entries.map(\.volume.volumeID) == [a, b, c, clone].map(\.volumeID).sorted())
        #expect(entries.first { $0.volume.volumeID == a.volumeID }?.status.publishedNodeIds == ["worker-2"])
    }

    @Test func pagesFollowTheirTokensToTheEnd() async throws {
        let scene = ControllerScene()
        for index in 0..<5 { _ = try await scene.create("pvc-\(index)", storage: "ceph") }
        var seen: [String] = [], token = "", pages = 0
        repeat {
            let page = try await list(scene, max: 2, token: token)
            seen += page.entries.map(\.volume.volumeID)
            token = page.nextToken
            pages += 1
        } while !token.isEmpty
        #expect(pages == 3 && seen == (0..<5).map { "main//ceph/vm-9999-pvc-\($0)" })
    }

    @Test(arguments: [("x", 0, .aborted), ("99", 0, .aborted), ("", -1, .invalidArgument)] as [(String, Int32, StatusCode)])
    func aTokenNeverGivenOutIsAborted(token: String, max: Int32, code: StatusCode) async throws {
        let scene = ControllerScene()
        _ = try await scene.create("pvc-a")
        await #expect { try await list(scene, max: max, token: token) } throws: { ($0 as? RPCError)?.code == code }
    }

    @Test(arguments: [
        ([String: String](), [String: String](), Int64(500 << 30)),
        (["storage": "local-lvm"], [:], 100 << 30),
        (["storage": "local-lvm"], [TopologyKey.zone: "pve1"], 99 << 30),
        (["storage": "nowhere"], [:], 0),
    ] as [([String: String], [String: String], Int64)])
    func capacityIsTheLargestFreeSpaceWithinTheAskedStorageAndZone(parameters: [String: String], segments: [String: String],
                                                                   expected: Int64) async throws {
        let scene = ControllerScene()
        scene.fake.addVolume("local-lvm:vm-1-x", node: "pve1", owner: 1, size: 1 << 30)
        let response: Csi_V1_GetCapacityResponse = try await scene.call("GetCapacity", Csi_V1_GetCapacityRequest.with {
            $0.parameters = parameters
            $0.accessibleTopology.segments = segments
        })
        #expect(response.availableCapacity == expected)
    }

    @Test func capacityForACapabilityTheDriverCannotServeIsInvalid() async {
        let request = Csi_V1_GetCapacityRequest.with {
            $0.volumeCapabilities = [.with { $0.accessMode.mode = .multiNodeMultiWriter; $0.mount = .init() }]
        }
        #expect(await ControllerScene().code("GetCapacity", request) == .invalidArgument)
    }

    @Test(arguments: [
        (Csi_V1_VolumeCapability.AccessMode.Mode.singleNodeWriter, true),
        (.singleNodeMultiWriter, true),
        (.multiNodeMultiWriter, false),
    ])
    func validationConfirmsWhatTheDriverServes(mode: Csi_V1_VolumeCapability.AccessMode.Mode, confirmed: Bool) async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        let response: Csi_V1_ValidateVolumeCapabilitiesResponse = try await scene.call("ValidateVolumeCapabilities",
                                                                                       Csi_V1_ValidateVolumeCapabilitiesRequest.with {
            $0.volumeID = volume.volumeID
            $0.volumeCapabilities = [.with { $0.accessMode.mode = mode; $0.mount = .init() }]
        })
        #expect(response.hasConfirmed == confirmed && response.message.isEmpty == confirmed)
    }

    @Test(arguments: [("main/pve1/local-lvm/vm-9999-gone", true, StatusCode.notFound), ("", true, .invalidArgument),
                      ("main/pve1/local-lvm/vm-9999-pvc-a", false, .invalidArgument)] as [(String, Bool, StatusCode)])
    func validationOfWhatIsNotThereHasItsCode(volumeID: String, withCapability: Bool, code: StatusCode) async throws {
        let scene = ControllerScene()
        _ = try await scene.create("pvc-a")
        #expect(await scene.code("ValidateVolumeCapabilities", Csi_V1_ValidateVolumeCapabilitiesRequest.with {
            $0.volumeID = volumeID
            if withCapability { $0.volumeCapabilities = [ControllerScene.mount] }
        }) == code)
    }

    @Test func theCapabilitiesAreTheOnesTheDriverImplements() async throws {
        let response: Csi_V1_ControllerGetCapabilitiesResponse = try await ControllerScene().call(
            "ControllerGetCapabilities", Csi_V1_ControllerGetCapabilitiesRequest())
        #expect(response.capabilities.map(\.rpc.type) == ControllerService.capabilities)
        #expect(response.capabilities.map(\.rpc.type).contains(.createDeleteSnapshot))
    }
}
