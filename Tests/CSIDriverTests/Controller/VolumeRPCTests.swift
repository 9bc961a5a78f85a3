@testable import CSIDriver
import CSIProto
import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Testing
import UnaryGRPC

/// CreateVolume and DeleteVolume against the in-memory cluster, through the router.
@Suite struct CreateVolumeTests {
    @Test func aVolumeGoesToTheNodeWithMostFreeSpaceRoundedToTheAllocationUnit() async throws {
        let scene = ControllerScene()
        scene.fake.addVolume("local-lvm:vm-1-big", node: "pve1", owner: 1, size: 60 << 30)
        let volume = try await scene.create("pvc-a", bytes: (1 << 30) + 1)
        #expect(volume.volumeID == "main/pve2/local-lvm/vm-9999-pvc-a")
        #expect(volume.capacityBytes == (1 << 30) + (4 << 20))
        #expect(volume.accessibleTopology.map(\.segments) == [[TopologyKey.region: "main", TopologyKey.zone: "pve2"]])
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a")?.size == (1 << 30) + (4 << 20))
    }

    @Test func creatingAgainAnswersTheSameVolumeAndAllocatesNothing() async throws {
        let scene = ControllerScene()
        let first = try await scene.create("pvc-a")
        let second = try await scene.create("pvc-a")
        #expect(first == second)
        #expect(scene.fake.count(.allocate) == 1)
    }

    @Test func aSharedVolumeIsAllocatedWithoutAListingAndARetryFindsIt() async throws {
        let scene = ControllerScene()
        let first = try await scene.create("pvc-a", storage: "ceph")
        #expect(scene.fake.count(.volumes) == 0, "Proxmox refuses a name that exists: no listing before the allocation")
        // The retry's allocation is refused; the listing after it finds the first attempt's volume.
        #expect(try await scene.create("pvc-a", storage: "ceph") == first)
        #expect(scene.fake.count(.volumes) == 1)
        await #expect { try await scene.create("pvc-a", storage: "ceph", bytes: 2 << 30) } throws: { ($0 as? RPCError)?.code == .alreadyExists }
    }

    @Test func aVolumeOfTheNameWithAnotherSizeAlreadyExists() async throws {
        let scene = ControllerScene()
        _ = try await scene.create("pvc-a", bytes: 1 << 30)
        await #expect { try await scene.create("pvc-a", bytes: 2 << 30) } throws: { ($0 as? RPCError)?.code == .alreadyExists }
    }

    @Test func aSharedStoragesVolumeHasNoNodeAndIsReachableFromTheWholeCluster() async throws {
        let volume = try await ControllerScene().create("pvc-a", storage: "ceph")
        #expect(volume.volumeID == "main//ceph/vm-9999-pvc-a")
        #expect(volume.accessibleTopology.map(\.segments) == [[TopologyKey.region: "main"]])
    }

    @Test func aFileStoragesVolumeIsARawFileInTheOwnersFolder() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "local")
        #expect(volume.volumeID.hasSuffix("/local/vm-9999-pvc-a.raw"))
        #expect(scene.fake.volume("local:9999/vm-9999-pvc-a.raw") != nil)
    }

    @Test(arguments: [("pve2", [String]()), ("pve1", ["pve1"]), ("pve2", ["pve2", "pve1"])])
    func topologyRequirementsChooseTheNode(expected: String, preferred: [String]) async throws {
        let scene = ControllerScene()
        scene.fake.addVolume("local-lvm:vm-1-big", node: "pve1", owner: 1, size: 10 << 30)
        let response: Csi_V1_CreateVolumeResponse = try await scene.call("CreateVolume", Csi_V1_CreateVolumeRequest.with {
            $0.name = "pvc-a"
            $0.volumeCapabilities = [ControllerScene.mount]
            $0.parameters = ["storage": "local-lvm"]
            $0.accessibilityRequirements.requisite = ["pve1", "pve2"].map { zone in .with { $0.segments = [TopologyKey.zone: zone] } }
            $0.accessibilityRequirements.preferred = preferred.map { zone in .with { $0.segments = [TopologyKey.zone: zone] } }
        })
        #expect(response.volume.volumeID == "main/\(expected)/local-lvm/vm-9999-pvc-a")
    }

    @Test func aRequisiteZoneIsNeverLeft() async throws {
        let scene = ControllerScene()
        scene.fake.addVolume("local-lvm:vm-1-big", node: "pve1", owner: 1, size: 10 << 30)
        let response: Csi_V1_CreateVolumeResponse = try await scene.call("CreateVolume", Csi_V1_CreateVolumeRequest.with {
            $0.name = "pvc-a"
            $0.volumeCapabilities = [ControllerScene.mount]
            $0.parameters = ["storage": "local-lvm"]
            $0.accessibilityRequirements.requisite = [.with { $0.segments = [TopologyKey.region: "main", TopologyKey.zone: "pve1"] }]
        })
        #expect(response.volume.volumeID.hasPrefix("main/pve1/"))
    }

    @Test(arguments: [
        ("", ["storage": "local-lvm"], Int64(1 << 30), Int64(0), true, StatusCode.invalidArgument),
        ("pvc-a", ["storage": "local-lvm"], 1 << 30, 0, false, .invalidArgument),
        ("pvc-a", ["storage": "local-lvm"], -1, 0, true, .invalidArgument),
        ("pvc-a", ["storage": "local-lvm"], 2 << 30, 1 << 30, true, .invalidArgument),
        ("pvc-a", ["storage": "local-lvm"], 1, 2, true, .outOfRange),
        ("pvc-a", ["storage": "nowhere"], 1 << 30, 0, true, .invalidArgument),
        ("pvc-a", ["storage": "local-lvm", "colour": "blue"], 1 << 30, 0, true, .invalidArgument),
        ("pvc-a", ["storage": "local-lvm"], 200 << 30, 0, true, .resourceExhausted),
    ] as [(String, [String: String], Int64, Int64, Bool, StatusCode)])
    func badRequestsAreRefusedWithTheirCodeAndAllocateNothing(name: String, parameters: [String: String], required: Int64,
                                                              limit: Int64, withCapability: Bool, code: StatusCode) async {
        let scene = ControllerScene()
        let request = Csi_V1_CreateVolumeRequest.with {
            $0.name = name
            if withCapability { $0.volumeCapabilities = [ControllerScene.mount] }
            $0.capacityRange.requiredBytes = required
            $0.capacityRange.limitBytes = limit
            $0.parameters = parameters
        }
        #expect(await scene.code("CreateVolume", request) == code)
        #expect(scene.fake.count(.allocate) == 0)
    }

    @Test func aRegionNoClusterServesIsInvalid() async {
        let request = Csi_V1_CreateVolumeRequest.with {
            $0.name = "pvc-a"
            $0.volumeCapabilities = [ControllerScene.mount]
            $0.parameters = ["storage": "local-lvm"]
            $0.accessibilityRequirements.requisite = [.with { $0.segments = [TopologyKey.region: "mars"] }]
        }
        #expect(await ControllerScene().code("CreateVolume", request) == .invalidArgument)
    }

    /// Each Proxmox failure reaches the client as one code (Controller/ControllerErrors.swift).
    @Test(arguments: [
        (ProxmoxError.permissionDenied(path: "/storage/local-lvm", privilege: "Datastore.AllocateSpace", message: "no"), StatusCode.permissionDenied),
        (.authenticationFailed(reason: "invalid token"), .unauthenticated),
        (.vmLocked(vmid: 9999, lock: "backup"), .aborted),
        (.configLockTimeout("got timeout"), .aborted),
        (.transport(.timedOut("no answer")), .unavailable),
        (.proxy(status: 596, message: "broken pipe"), .unavailable),
        (.invalidParameters(["size": "bad"]), .invalidArgument),
        (.server(status: 500, message: "lvcreate failed"), .internal),
        (.notFound("storage"), .notFound),
        (.malformedResponse("no volid"), .internal),
    ])
    func aProxmoxFailureHasItsCode(error: ProxmoxError, code: StatusCode) async throws {
        let scene = ControllerScene()
        scene.fake.failNext(.allocate, with: error)
        do {
            _ = try await scene.create("pvc-a")
            Issue.record("CreateVolume succeeded")
        } catch {
            #expect(error.code == code)
            #expect(error.message.hasPrefix("CreateVolume pvc-a: "))
        }
    }

    @Test func aNameTakenByACopyWithoutAContentSourceAlreadyExists() async throws {
        let scene = ControllerScene()
        let source = try await scene.create("pvc-a")
        _ = try await scene.restore("pvc-b") { $0.volume.volumeID = source.volumeID }
        await #expect { try await scene.create("pvc-b") } throws: { ($0 as? RPCError)?.code == .alreadyExists }
    }
}

@Suite struct DeleteVolumeTests {
    func delete(_ scene: ControllerScene, _ id: String) async -> StatusCode? {
        await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = id })
    }

    @Test func aVolumeIsDeletedAndDeletingAgainIsDone() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        #expect(await delete(scene, volume.volumeID) == nil)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a") == nil)
        #expect(await delete(scene, volume.volumeID) == nil)
    }

    @Test(arguments: ["main/pve1/local-lvm/vm-100-disk-0", "garbage", "other/pve1/local-lvm/vm-9999-x", "main/pve1/nowhere/vm-9999-x"])
    func anIDTheDriverNeverMadeIsDoneAndTouchesNothing(id: String) async {
        let scene = ControllerScene()
        scene.fake.addVolume("local-lvm:vm-100-disk-0", node: "pve1", owner: 100)
        #expect(await delete(scene, id) == nil)
        #expect(scene.fake.volume("local-lvm:vm-100-disk-0") != nil)
        #expect(scene.fake.count(.deleteVolume) == 0)
    }

    @Test func anEmptyIDIsInvalid() async {
        #expect(await delete(ControllerScene(), "") == .invalidArgument)
    }

    @Test func anAttachedVolumeIsKept() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        _ = try await scene.publish(volume.volumeID, to: "worker-1")
        #expect(await delete(scene, volume.volumeID) == .failedPrecondition)
        #expect(scene.fake.volume("ceph:vm-9999-pvc-a") != nil)
    }

    @Test func aVolumeLeftOnAHolderIsReleasedAndDeleted() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a", storage: "ceph")
        scene.fake.addVM(140, node: "pve1", name: "proxmox-csi-holder-pve1", running: false, config: ["scsi0": "ceph:vm-9999-pvc-a"])
        #expect(await delete(scene, volume.volumeID) == nil)
        #expect(scene.fake.volume("ceph:vm-9999-pvc-a") == nil && scene.fake.vm(140)!.values["scsi0"] == nil)
    }

    @Test func aRestoredVolumeGoesWithItsRecordVMAndAModifiedOneWithItsOptions() async throws {
        let scene = ControllerScene()
        let source = try await scene.create("pvc-a")
        let clone = try await scene.restore("pvc-b") { $0.volume.volumeID = source.volumeID }
        let _: Csi_V1_ControllerModifyVolumeResponse = try await scene.call("ControllerModifyVolume", Csi_V1_ControllerModifyVolumeRequest.with {
            $0.volumeID = clone.volumeID
            $0.mutableParameters = ["diskIOPS": "100"]
        })
        #expect(scene.fake.vms(named: CopyVM.vmName(.volume, csiName: "pvc-b")).count == 1)
        #expect(await delete(scene, clone.volumeID) == nil)
        #expect(scene.fake.vms(named: CopyVM.vmName(.volume, csiName: "pvc-b")).isEmpty)
        #expect(scene.fake.vms(named: CopyVM.vmName(.options, csiName: clone.volumeID)).isEmpty)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-a") != nil)
    }
}

/// Volumes proxmox-csi-plugin made, by the ids it wrote (issue 14, item 2).
@Suite struct PluginHandleTests {
    @Test func aFileStorageVolumeByThePluginsPathIdIsPublishedExpandedAndDeleted() async throws {
        let scene = ControllerScene()
        scene.fake.addVolume("local:9999/vm-9999-pvc-p.raw", node: "pve1", owner: 9999)
        let id = "main/pve1/local/9999/vm-9999-pvc-p.raw"
        _ = try await scene.publish(id, to: "worker-1")
        #expect(scene.disks(of: "local:9999/vm-9999-pvc-p.raw") == ["100:scsi1"])
        let grown: Csi_V1_ControllerExpandVolumeResponse = try await scene.call("ControllerExpandVolume", Csi_V1_ControllerExpandVolumeRequest.with {
            $0.volumeID = id
            $0.capacityRange.requiredBytes = 2 << 30
        })
        #expect(grown.capacityBytes == 2 << 30 && scene.fake.volume("local:9999/vm-9999-pvc-p.raw")?.size == 2 << 30)
        try await scene.unpublish(id, from: "worker-1")
        // DeleteVolume never answers OK while the disk its id names remains.
        #expect(await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = id }) == nil)
        #expect(scene.fake.volume("local:9999/vm-9999-pvc-p.raw") == nil)
    }

    @Test func aSharedNFSVolumeByThePluginsPathIdIsFoundAndDeleted() async throws {
        let scene = ControllerScene()
        scene.fake.addStorage("nfs", type: "nfs", shared: true)
        scene.fake.addVolume("nfs:9999/vm-9999-pvc-n.raw", node: nil, owner: 9999)
        let id = "main//nfs/9999/vm-9999-pvc-n.raw"
        let got: Csi_V1_ControllerGetVolumeResponse = try await scene.call("ControllerGetVolume", Csi_V1_ControllerGetVolumeRequest.with { $0.volumeID = id })
        #expect(got.volume.volumeID == id && got.volume.capacityBytes == 1 << 30)
        #expect(await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = id }) == nil)
        #expect(scene.fake.volume("nfs:9999/vm-9999-pvc-n.raw") == nil)
    }

    @Test func aPathIdIntoAnotherVMsFolderIsNeverTheDrivers() async throws {
        let scene = ControllerScene()
        scene.fake.addVolume("local:100/vm-100-disk-1.raw", node: "pve1", owner: 100)
        #expect(await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = "main/pve1/local/100/vm-100-disk-1.raw" }) == nil)
        #expect(scene.fake.volume("local:100/vm-100-disk-1.raw") != nil)
    }
}

/// A shared storage whose `nodes` list names only some nodes (issue 14, item 5):
/// the plugin offers its volumes only there, and so does this driver.
@Suite struct LimitedSharedStorageTests {
    func scene() -> ControllerScene {
        let scene = ControllerScene()
        scene.fake.addStorage("nfs-a", type: "nfs", shared: true, nodes: ["pve1"])
        return scene
    }

    @Test func itsVolumesAreAccessibleOnlyFromTheNodesItNames() async throws {
        let volume = try await scene().create("pvc-a", storage: "nfs-a")
        #expect(volume.volumeID == "main//nfs-a/vm-9999-pvc-a.raw")
        #expect(volume.accessibleTopology.map(\.segments) == [[TopologyKey.region: "main", TopologyKey.zone: "pve1"]])
    }

    @Test func aStorageOnEveryNodeStaysReachableFromTheWholeCluster() async throws {
        let volume = try await scene().create("pvc-a", storage: "ceph")
        #expect(volume.accessibleTopology.map(\.segments) == [[TopologyKey.region: "main"]])
    }

    @Test func aPublishToAVMOnAnotherNodeIsRefusedAndWritesNothing() async throws {
        let scene = scene()
        let volume = try await scene.create("pvc-a", storage: "nfs-a")
        await #expect { try await scene.publish(volume.volumeID, to: "worker-2") } throws: {
            ($0 as? RPCError)?.code == .failedPrecondition && ($0 as? RPCError)?.message.contains("not available on Proxmox node pve2") == true
        }
        #expect(scene.fake.writes.isEmpty)
        _ = try await scene.publish(volume.volumeID, to: "worker-1")
        #expect(scene.disks(of: "nfs-a:9999/vm-9999-pvc-a.raw") == ["100:scsi1"])
    }

    @Test func getVolumeReportsTheSameTopology() async throws {
        let scene = scene()
        let volume = try await scene.create("pvc-a", storage: "nfs-a")
        let got: Csi_V1_ControllerGetVolumeResponse = try await scene.call("ControllerGetVolume",
                                                                           Csi_V1_ControllerGetVolumeRequest.with { $0.volumeID = volume.volumeID })
        #expect(got.volume.accessibleTopology == volume.accessibleTopology)
    }
}
