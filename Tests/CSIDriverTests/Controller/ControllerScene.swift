@testable import CSIDriver
import CSIProto
import FakeProxmox
import Logging
import ProxmoxAPI
@testable import ProxmoxDomain
import SwiftProtobuf
import UnaryGRPC

/// The controller service on the in-memory cluster, called through its gRPC
/// router the way the server calls it (decoding, the error mapping, the status).
/// Cluster "main": nodes pve1 and pve2; storages local-lvm (lvmthin, local),
/// ceph (rbd, shared), local (dir, local), thick (lvm), tank (zfspool); node VMs worker-1 (100, pve1) and
/// worker-2 (101, pve2), each with its boot disk as scsi0.
struct ControllerScene {
    static let owner = 9999
    let fake = FakeCluster()
    let volumes: ProxmoxVolumes
    let router: Router
    /// The same service the router calls, for what is no RPC (the volume move).
    let service: ControllerService

    /// `scanSeconds`: how long scans trust a config read (0: every scan reads again).
    init(profiles: String = "", scanSeconds: Double = 0) {
        fake.addStorage("local-lvm", type: "lvmthin", capacity: 100 << 30)
        fake.addStorage("ceph", type: "rbd", shared: true, capacity: 500 << 30)
        fake.addStorage("local", type: "dir", capacity: 50 << 30)
        // Storages without native snapshots: snapshots there are full copies.
        fake.addStorage("thick", type: "lvm", capacity: 100 << 30)
        fake.addStorage("tank", type: "zfspool", capacity: 100 << 30)
        fake.addVM(100, node: "pve1", name: "worker-1", config: ["scsi0": "local-lvm:vm-100-disk-0,size=32G"])
        fake.addVM(101, node: "pve2", name: "worker-2", config: ["scsi0": "local-lvm:vm-101-disk-0,size=32G"])
        let config = try! DriverConfig.parse("""
        clusters:
          - name: main
            url: https://pve:8006
            tokenID: csi@pve!csi
            tokenSecret: s
        """ + profiles)
        volumes = ProxmoxVolumes(clusters: [("main", fake)], ownerVMID: Self.owner, taskTimeout: 60, cacheSeconds: 0, scanSeconds: scanSeconds)
        var router = Router()
        service = ControllerService(volumes: volumes, config: config)
        service.register(into: &router)
        self.router = router
    }

    /// One RPC through the router: its response, or the status it failed with.
    func call<Response: SwiftProtobuf.Message>(_ method: String, _ request: some SwiftProtobuf.Message,
                                                as _: Response.Type = Response.self) async throws(RPCError) -> Response {
        let context = CallContext(method: method, deadline: nil, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        let bytes: [UInt8] = try! request.serializedBytes()
        switch await router.handle(path: "/csi.v1.Controller/\(method)", message: bytes, context: context) {
        case let .success(answer): return try! Response(serializedBytes: answer)
        case let .failure(error): throw error
        }
    }

    /// The status code an RPC fails with, or nil when it succeeds.
    func code(_ method: String, _ request: some SwiftProtobuf.Message) async -> StatusCode? {
        do {
            let _: Google_Protobuf_Empty = try await call(method, request)
            return nil
        } catch {
            return error.code
        }
    }

    static let mount = Csi_V1_VolumeCapability.with {
        $0.accessMode.mode = .singleNodeWriter
        $0.mount.fsType = "xfs"
    }

    static let block = Csi_V1_VolumeCapability.with {
        $0.accessMode.mode = .singleNodeWriter
        $0.block = .init()
    }

    func create(_ name: String, storage: String = "local-lvm", bytes: Int64 = 1 << 30,
                extra: [String: String] = [:]) async throws(RPCError) -> Csi_V1_Volume {
        let response: Csi_V1_CreateVolumeResponse = try await call("CreateVolume", Csi_V1_CreateVolumeRequest.with {
            $0.name = name
            $0.volumeCapabilities = [Self.mount]
            $0.capacityRange.requiredBytes = bytes
            $0.parameters = ["storage": storage].merging(extra) { $1 }
        })
        return response.volume
    }

    /// CreateVolume with a content source (a snapshot or a volume to copy).
    func restore(_ name: String, storage: String = "local-lvm", bytes: Int64 = 0,
                 source: (inout Csi_V1_VolumeContentSource) -> Void) async throws(RPCError) -> Csi_V1_Volume {
        let response: Csi_V1_CreateVolumeResponse = try await call("CreateVolume", Csi_V1_CreateVolumeRequest.with {
            $0.name = name
            $0.volumeCapabilities = [Self.mount]
            $0.parameters = ["storage": storage]
            $0.capacityRange.requiredBytes = bytes
            $0.volumeContentSource = .with(source)
        })
        return response.volume
    }

    func publish(_ volumeID: String, to node: String, readonly: Bool = false,
                 context: [String: String] = [:]) async throws(RPCError) -> [String: String] {
        let response: Csi_V1_ControllerPublishVolumeResponse = try await call("ControllerPublishVolume",
                                                                              Csi_V1_ControllerPublishVolumeRequest.with {
            $0.volumeID = volumeID
            $0.nodeID = node
            $0.volumeCapability = Self.mount
            $0.readonly = readonly
            $0.volumeContext = context
        })
        return response.publishContext
    }

    func unpublish(_ volumeID: String, from node: String) async throws(RPCError) {
        let _: Csi_V1_ControllerUnpublishVolumeResponse = try await call("ControllerUnpublishVolume",
                                                                         Csi_V1_ControllerUnpublishVolumeRequest.with {
            $0.volumeID = volumeID
            $0.nodeID = node
        })
    }

    func snapshot(_ name: String, of volumeID: String) async throws(RPCError) -> Csi_V1_Snapshot {
        let response: Csi_V1_CreateSnapshotResponse = try await call("CreateSnapshot", Csi_V1_CreateSnapshotRequest.with {
            $0.name = name
            $0.sourceVolumeID = volumeID
        })
        return response.snapshot
    }

    /// Where the volume is a disk: "vmid:key" for every VM config holding it.
    func disks(of volid: String) -> [String] {
        fake.state.withLock { state in
            state.vms.values.flatMap { vm in
                vm.values.filter { $0.key.range(of: #"^(scsi|virtio)\d+$"#, options: .regularExpression) != nil
                    && $0.value.split(separator: ",").first.map(String.init) == volid }
                    .map { "\(vm.vmid):\($0.key)" }
            }.sorted()
        }
    }
}
