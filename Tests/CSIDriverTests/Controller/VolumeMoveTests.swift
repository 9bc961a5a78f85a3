@testable import CSIDriver
import CSIProto
import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain
import Synchronization
import Testing
import UnaryGRPC

/// Moving a volume between Proxmox nodes on the in-memory cluster: the steps,
/// where a rerun picks up, and what is refused. (The simulator run with the
/// data and a kill -9 at each step is bench/tests/test_volume_move.py.)
struct VolumeMoveTests {
    @Test func aDetachedLocalVolumeMovesToTheOtherNodeAndTheOriginalGoes() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-m", bytes: 2 << 30)
        #expect(volume.volumeID == "main/pve1/local-lvm/vm-9999-pvc-m")
        let move = VolumeMove(volumeID: volume.volumeID, target: "pve2")
        #expect(try await scene.service.stage(of: move) == .copy(from: "pve1", storage: "local-lvm", bytes: 2 << 30))
        let steps = Mutex<[String]>([])
        let moved = try await scene.service.run(move, timeout: 60) { line in steps.withLock { $0.append(line) } }
        #expect(moved.hasPrefix("main/pve2/local-lvm/vm-") && moved.hasSuffix("-disk-0"))
        #expect(steps.withLock { $0.map { String($0.prefix(while: { $0 != ":" })) } } == ["copy", "migrate", "delete", "done"])
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-m") == nil, "the original is gone")
        let copy = try #require(scene.fake.volume("local-lvm:" + moved.split(separator: "/").last!))
        #expect(copy.node == "pve2" && copy.size == 2 << 30)
        // The moved volume is a volume like any other: found, published on pve2, deleted with its record VM.
        let found: Csi_V1_ControllerGetVolumeResponse = try await scene.call("ControllerGetVolume", Csi_V1_ControllerGetVolumeRequest.with {
            $0.volumeID = moved
        })
        #expect(found.volume.capacityBytes == 2 << 30)
        #expect(try await scene.service.stage(of: move) == .done(newID: moved), "asked again once done: the same answer")
        #expect(await scene.code("DeleteVolume", Csi_V1_DeleteVolumeRequest.with { $0.volumeID = moved }) == nil)
        #expect(scene.fake.volume(copy.volid) == nil)
    }

    @Test func aRerunAfterTheMigrationGoesOnWithTheDeletion() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-r")
        let move = VolumeMove(volumeID: volume.volumeID, target: "pve2")
        // A first run stopped after the copy was made (as a kill would leave it).
        _ = try await scene.call("CreateVolume", Csi_V1_CreateVolumeRequest.with {
            $0.name = move.copyName
            $0.volumeCapabilities = [ControllerScene.block]
            $0.parameters = ["storage": "local-lvm"]
            $0.volumeContentSource.volume.volumeID = volume.volumeID
        }, as: Csi_V1_CreateVolumeResponse.self)
        guard case let .migrate(vm, from, migrating) = try await scene.service.stage(of: move) else {
            Issue.record("a made copy migrates next"); return
        }
        #expect(from == "pve1" && !migrating)
        // ... and another stopped after the migration.
        _ = try await scene.fake.startMigrate(node: "pve1", vmid: vm, target: "pve2")
        guard case let .deleteOriginal(newID) = try await scene.service.stage(of: move) else {
            Issue.record("a migrated copy leaves the deletion"); return
        }
        #expect(try await scene.service.run(move, timeout: 60) { _ in } == newID)
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-r") == nil)
        #expect(try await scene.service.stage(of: move) == .done(newID: newID))
    }

    @Test func optionsAModifyRecordedFollowTheVolumeToItsNewID() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-o")
        let _: Csi_V1_ControllerModifyVolumeResponse = try await scene.call("ControllerModifyVolume", Csi_V1_ControllerModifyVolumeRequest.with {
            $0.volumeID = volume.volumeID
            $0.mutableParameters = ["diskIOPS": "700"]
        })
        let moved = try await scene.service.run(VolumeMove(volumeID: volume.volumeID, target: "pve2"), timeout: 60) { _ in }
        #expect(try await scene.volumes.copyVM(.options, csiName: moved, cluster: "main")?.options == ["diskIOPS": "700"])
        #expect(try await scene.volumes.copyVM(.options, csiName: volume.volumeID, cluster: "main") == nil, "the original's went with it")
    }

    @Test func aVolumeItsRecordVMOwnsMovesWithThatVMAndIsNotCopied() async throws {
        let scene = ControllerScene()
        let source = try await scene.create("pvc-s")
        let clone = try await scene.restore("pvc-c") { $0.volume.volumeID = source.volumeID }
        let owner = try #require(VolumeHandle(parsing: clone.volumeID).ownerVMID)
        let move = VolumeMove(volumeID: clone.volumeID, target: "pve2")
        #expect(try await scene.service.stage(of: move) == .migrate(vm: owner, from: "pve1", migrating: false))
        let vmsBefore = scene.fake.state.withLock { $0.vms.count }
        let moved = try await scene.service.run(move, timeout: 60) { _ in }
        #expect(moved == "main/pve2/local-lvm/" + clone.volumeID.split(separator: "/").last!)
        #expect(scene.fake.vm(owner)?.node == "pve2" && scene.fake.state.withLock { $0.vms.count } == vmsBefore, "no copy VM")
        #expect(scene.fake.volume("local-lvm:vm-9999-pvc-s") != nil, "the clone's source is untouched")
    }

    @Test func anAttachedVolumeIsRefusedNamingItsVM() async throws {
        let scene = ControllerScene()
        let volume = try await scene.create("pvc-a")
        let _: Csi_V1_ControllerPublishVolumeResponse = try await scene.call("ControllerPublishVolume", Csi_V1_ControllerPublishVolumeRequest.with {
            $0.volumeID = volume.volumeID
            $0.nodeID = "worker-1"
            $0.volumeCapability = ControllerScene.mount
        })
        await #expect { try await scene.service.stage(of: VolumeMove(volumeID: volume.volumeID, target: "pve2")) } throws: { error in
            let rpc = error as? RPCError
            return rpc?.code == .failedPrecondition && rpc!.message.contains("VM 100 (worker-1)")
        }
        #expect(scene.fake.vm(100)?.values.values.contains { $0.hasPrefix("local-lvm:vm-9999-pvc-a") } == true)
    }

    @Test(arguments: [
        ("ceph", "pve2", StatusCode.failedPrecondition, "shared storage"),
        ("local-lvm", "pve1", .alreadyExists, "on pve1 already"),
        ("thick", "pve2", .failedPrecondition, "not available on node pve2"),
    ] as [(String, String, StatusCode, String)])
    func whatCannotMoveIsRefused(storage: String, target: String, code: StatusCode, words: String) async throws {
        let scene = ControllerScene()
        scene.fake.addStorage("thick", type: "lvm", nodes: ["pve1"], capacity: 100 << 30)
        let volume = try await scene.create("pvc-x", storage: storage)
        await #expect { try await scene.service.stage(of: VolumeMove(volumeID: volume.volumeID, target: target)) } throws: { error in
            let rpc = error as? RPCError
            return rpc?.code == code && rpc!.message.contains(words)
        }
    }
}
