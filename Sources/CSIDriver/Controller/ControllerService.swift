import CSIProto
import FoundationEssentials
import ProxmoxAPI
import ProxmoxDomain
import SwiftProtobuf
import UnaryGRPC

public enum TopologyKey {
    public static let region = "topology.kubernetes.io/region"
    public static let zone = "topology.kubernetes.io/zone"
}

extension VolumeHandle {
    /// Where the volume can be used: the cluster, and the node for local storage.
    var topologySegments: [String: String] {
        node.map { [TopologyKey.region: cluster, TopologyKey.zone: $0] } ?? [TopologyKey.region: cluster]
    }

    /// Its accessible topology: a shared storage whose `nodes` list leaves out
    /// some nodes is reachable only from those it names, one segment each.
    func accessibleTopology(on storage: StorageRef) -> [Csi_V1_Topology] {
        guard node == nil, storage.limitedToSomeNodes else { return [.with { $0.segments = topologySegments }] }
        return storage.available.keys.sorted().map { zone in .with { $0.segments = [TopologyKey.region: cluster, TopologyKey.zone: zone] } }
    }
}

/// The CSI Controller service: thin translations of CSI onto ProxmoxVolumes.
public struct ControllerService: Sendable {
    let volumes: ProxmoxVolumes
    let config: DriverConfig

    static let mebibyte: Int64 = 1 << 20
    static let gibibyte: Int64 = 1 << 30
    /// Sizes are rounded up to this: LVM's extent size, a multiple of every other storage's granule.
    static let allocationUnit: Int64 = 4 * mebibyte

    public init(volumes: ProxmoxVolumes, config: DriverConfig) {
        self.volumes = volumes
        self.config = config
    }

    public static let capabilities: [Csi_V1_ControllerServiceCapability.RPC.TypeEnum] = [
        .createDeleteVolume, .publishUnpublishVolume, .listVolumes, .listVolumesPublishedNodes,
        .getCapacity, .publishReadonly, .singleNodeMultiWriter, .expandVolume, .getVolume, .volumeCondition,
        .createDeleteSnapshot, .listSnapshots, .cloneVolume, .modifyVolume,
    ]

    public func register(into router: inout Router) {
        // Calls that change where a volume is attached, or whether it exists, run one at a time per
        // volume; concurrent calls with one name wait for each other and give the same answer
        // (the way aws-ebs-csi-driver's inflight.go keeps duplicates apart).
        let one = volumes.volumeLocks
        router.register("/csi.v1.Controller/CreateVolume") { request, _ in
            try await one.run("create/\(request.name)") { try await createVolume(request) }
        }
        router.register("/csi.v1.Controller/DeleteVolume") { request, _ in try await one.run(request.volumeID) { try await deleteVolume(request) } }
        router.register("/csi.v1.Controller/ControllerPublishVolume") { request, _ in try await one.run(request.volumeID) { try await publish(request) } }
        router.register("/csi.v1.Controller/ControllerUnpublishVolume") { request, _ in
            try await one.run(request.volumeID) { try await unpublish(request) }
        }
        router.register("/csi.v1.Controller/ValidateVolumeCapabilities") { request, _ in try await validate(request) }
        router.register("/csi.v1.Controller/ListVolumes") { request, _ in try await listVolumes(request) }
        router.register("/csi.v1.Controller/GetCapacity") { request, _ in try await getCapacity(request) }
        router.register("/csi.v1.Controller/ControllerExpandVolume") { request, _ in try await one.run(request.volumeID) { try await expand(request) } }
        router.register("/csi.v1.Controller/ControllerGetVolume") { request, _ in try await getVolume(request) }
        registerSnapshots(into: &router)
        router.register("/csi.v1.Controller/ControllerModifyVolume") { request, _ in try await one.run(request.volumeID) { try await modify(request) } }
        router.registerImmediate("/csi.v1.Controller/ControllerGetCapabilities") { (_: Csi_V1_ControllerGetCapabilitiesRequest, _) in
            Csi_V1_ControllerGetCapabilitiesResponse.with {
                $0.capabilities = Self.capabilities.map { type in .with { $0.rpc.type = type } }
            }
        }
    }
}

extension Sequence {
    func asyncCompactMap<T>(_ transform: (Element) async throws -> T?) async rethrows -> [T] {
        var out: [T] = []
        for element in self {
            if let value = try await transform(element) { out.append(value) }
        }
        return out
    }
}
