import CSIProto
import FoundationEssentials
import ProxmoxAPI
import ProxmoxDomain
import SwiftProtobuf
import UnaryGRPC

// CreateVolume and DeleteVolume: where a volume goes, how big it is, and its removal.
extension ControllerService {
    // MARK: - CreateVolume

    func createVolume(_ request: Csi_V1_CreateVolumeRequest) async throws -> Csi_V1_CreateVolumeResponse {
        guard !request.name.isEmpty else { throw RPCError(.invalidArgument, "name is required") }
        try CapabilityCheck.require(request.volumeCapabilities, field: "volume_capabilities")
        let bytes = try Self.size(for: request.capacityRange)
        let cluster = try chooseCluster(request.accessibilityRequirements)
        // A VolumeAttributesClass given at creation sets the same options a later modify would.
        try VolumeParameters.checkMutable(request.mutableParameters, config: config, cluster: cluster)
        let parameters = try VolumeParameters.parse(request.parameters.merging(request.mutableParameters) { $1 },
                                                    config: config, cluster: cluster)
        let what = "CreateVolume \(request.name)"
        do {
            if request.hasVolumeContentSource {
                return try await createVolumeFromSource(request, cluster: cluster, parameters: parameters)
            }
            guard let storage = try await volumes.storage(cluster, parameters.storage) else {
                throw RPCError(.invalidArgument, "StorageClass parameter \"storage\": no storage \"\(parameters.storage)\" in cluster \"\(cluster)\"")
            }
            if let copy = try await volumes.copyVM(.volume, csiName: request.name, cluster: cluster, fresh: false) {
                throw RPCError(.alreadyExists, "volume \(request.name) exists as a copy of \(copy.source); this request names no content source")
            }
            let format = parameters.fileFormat(on: storage.type)
            let name = VolumeNaming.volumeName(forCSIName: request.name, ownerVMID: config.ownerVMID, storageType: storage.type, format: format)
            // On shared storage the allocation comes first, saving a listing per volume: Proxmox
            // refuses a name that exists (pve-storage: each plugin's alloc_image), so the retry of
            // an attempt that made it fails here and finds it below. A local volume may have been
            // made on another node than this attempt would choose: looked for first.
            var refused: ProxmoxError?
            if storage.shared {
                let node = try chooseNode(storage, cluster: cluster, requirements: request.accessibilityRequirements, bytes: bytes)
                let handle = VolumeHandle(cluster: cluster, node: nil, storage: storage.id, volume: name)
                do {
                    try await volumes.allocate(handle, storage: storage, node: node, bytes: bytes, format: format)
                    return createdVolume(handle, bytes: bytes, storage: storage, parameters: parameters)
                } catch let error as ProxmoxError {
                    refused = error
                }
            }
            // A retry must find what an earlier attempt created, on whichever node.
            let candidates = storage.shared ? [nil] : storage.available.keys.sorted().map(Optional.some)
            for node in candidates {
                let handle = VolumeHandle(cluster: cluster, node: node, storage: storage.id, volume: name)
                if let existing = try await volumes.size(of: handle, storage: storage) {
                    if try await volumes.isKeptForSnapshots(handle.description, cluster: cluster) {
                        throw RPCError(.alreadyExists, "volume \(request.name) was deleted, and its data is kept for its snapshots "
                            + "under the same name until they are deleted")
                    }
                    guard Self.fits(existing, request.capacityRange) else {
                        throw RPCError(.alreadyExists, "volume \(request.name) exists as \(handle) with \(existing) bytes, "
                            + "outside the requested range (required \(request.capacityRange.requiredBytes), limit \(request.capacityRange.limitBytes))")
                    }
                    return createdVolume(handle, bytes: existing, storage: storage, parameters: parameters)
                }
            }
            if let refused { throw refused }
            let node = try chooseNode(storage, cluster: cluster, requirements: request.accessibilityRequirements, bytes: bytes)
            let handle = VolumeHandle(cluster: cluster, node: storage.shared ? nil : node, storage: storage.id, volume: name)
            try await volumes.allocate(handle, storage: storage, node: node, bytes: bytes, format: format)
            return createdVolume(handle, bytes: bytes, storage: storage, parameters: parameters)
        } catch {
            throw rpcError(error, what)
        }
    }

    func createdVolume(_ handle: VolumeHandle, bytes: Int64, storage: StorageRef,
                          parameters: VolumeParameters) -> Csi_V1_CreateVolumeResponse {
        .with {
            $0.volume.volumeID = handle.description
            $0.volume.capacityBytes = bytes
            $0.volume.volumeContext = parameters.context
            $0.volume.accessibleTopology = handle.accessibleTopology(on: storage)
        }
    }

    /// The bytes to allocate: at least `required`, at most `limit`, 1 GiB when neither is given.
    static func size(for range: Csi_V1_CapacityRange) throws(RPCError) -> Int64 {
        let required = range.requiredBytes
        let limit = range.limitBytes
        guard required >= 0 else { throw RPCError(.invalidArgument, "capacity_range.required_bytes cannot be negative (\(required))") }
        guard limit >= 0 else { throw RPCError(.invalidArgument, "capacity_range.limit_bytes cannot be negative (\(limit))") }
        if limit > 0, required > limit {
            throw RPCError(.invalidArgument, "capacity_range: required_bytes \(required) exceeds limit_bytes \(limit)")
        }
        let wanted = required > 0 ? required : (limit > 0 ? min(gibibyte, limit) : gibibyte)
        let rounded = (wanted + allocationUnit - 1) / allocationUnit * allocationUnit
        if limit > 0, rounded > limit {
            throw RPCError(.outOfRange, "capacity_range: the storage allocates in \(allocationUnit / mebibyte) MiB units; "
                + "no size between \(required) and \(limit) bytes fits")
        }
        return rounded
    }

    static func fits(_ bytes: Int64, _ range: Csi_V1_CapacityRange) -> Bool {
        bytes >= range.requiredBytes && (range.limitBytes == 0 || bytes <= range.limitBytes)
    }

    /// The cluster a region requirement names, else the first configured one.
    func chooseCluster(_ requirements: Csi_V1_TopologyRequirement) throws(RPCError) -> String {
        let regions = (requirements.preferred + requirements.requisite).compactMap { $0.segments[TopologyKey.region] }
        for region in regions where config.clusters.contains(where: { $0.name == region }) {
            return region
        }
        if !regions.isEmpty {
            throw RPCError(.invalidArgument, "accessibility_requirements: no configured cluster for region(s) \(Set(regions).sorted())")
        }
        return config.clusters[0].name
    }

    /// Preferred zones first, then the node with most free space; requisite zones limit the choice.
    func chooseNode(_ storage: StorageRef, cluster: String, requirements: Csi_V1_TopologyRequirement, bytes: Int64) throws(RPCError) -> String {
        func zone(_ topology: Csi_V1_Topology) -> String? {
            if let region = topology.segments[TopologyKey.region], region != cluster { return nil }
            return topology.segments[TopologyKey.zone]
        }
        var nodes = storage.available.filter { $0.value >= bytes }.map(\.key)
        if !requirements.requisite.isEmpty, !storage.shared || storage.limitedToSomeNodes {
            let allowed = Set(requirements.requisite.compactMap(zone))
            if !allowed.isEmpty { nodes = nodes.filter(allowed.contains) }
        }
        guard !nodes.isEmpty else {
            throw RPCError(.resourceExhausted, "no node can hold \(bytes) bytes on storage \"\(storage.id)\" within the requested topology")
        }
        let preferred = requirements.preferred.compactMap(zone)
        if let first = preferred.first(where: nodes.contains) { return first }
        return nodes.max { (storage.available[$0] ?? 0, $1) < (storage.available[$1] ?? 0, $0) }!
    }

    // MARK: - DeleteVolume

    func deleteVolume(_ request: Csi_V1_DeleteVolumeRequest) async throws -> Csi_V1_DeleteVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        // An id this driver never made names no volume: deleting it is done.
        do {
            guard let (handle, storage) = try await volumes.locate(request.volumeID) else { return .init() }
            let attachments = try await volumes.attachments(of: handle, storage: storage)
            if let (vm, key) = try await volumes.releaseFromHolders(handle, storage: storage, attachments: attachments).first {
                throw RPCError(.failedPrecondition, "volume \(handle) is still attached to VM \(vm.vmid) (\(vm.name)) as \(key); "
                    + "unpublish it first")
            }
            // One listing of the VMs as their configs name them now, for the three lookups below.
            let listed = try await volumes.vmsAsConfigured(handle.cluster)
            if let recorded = try await volumes.copyVM(.options, csiName: request.volumeID, among: listed) {
                try await volumes.destroy(recorded)
            }
            // A restored or cloned volume belongs to its record VM: destroying that frees it.
            if let record = try await recordVM(of: handle, among: listed) {
                try await volumes.destroy(record)
                return .init()
            }
            // Native snapshots of it need its data: it is kept (hidden) until the last one goes.
            if try await volumes.keepForSnapshots(request.volumeID, cluster: handle.cluster, among: listed) { return .init() }
            try await volumes.delete(handle, storage: storage)
            return .init()
        } catch {
            throw rpcError(error, "DeleteVolume \(request.volumeID)")
        }
    }
}
