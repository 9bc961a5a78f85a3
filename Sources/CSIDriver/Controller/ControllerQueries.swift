import CSIProto
import FoundationEssentials
import ProxmoxAPI
import ProxmoxDomain
import SwiftProtobuf
import UnaryGRPC

// ControllerGetVolume, ValidateVolumeCapabilities, ListVolumes and GetCapacity.
extension ControllerService {
    // MARK: - GetVolume

    /// The volume, where it is published, and whether Proxmox shows anything wrong with it.
    func getVolume(_ request: Csi_V1_ControllerGetVolumeRequest) async throws -> Csi_V1_ControllerGetVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        do {
            guard let (handle, storage, size) = try await liveVolume(request.volumeID) else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
            let attachments = try await volumes.attachments(of: handle, storage: storage)
            let users = attachments.filter { !ProxmoxVolumes.isHolder($0.0) }
            let held = attachments.filter { ProxmoxVolumes.isHolder($0.0) }
            let condition: Csi_V1_VolumeCondition = .with {
                if users.count > 1 {
                    $0.abnormal = true
                    $0.message = "attached to \(users.count) VMs at once: " + users.map { "\($0.0.vmid) (\($0.1))" }.joined(separator: ", ")
                } else if !held.isEmpty {
                    $0.abnormal = true
                    $0.message = "still on holder VM \(held[0].0.vmid) from an interrupted operation; the next publish, expand or delete releases it"
                } else {
                    $0.message = users.isEmpty ? "not attached" : "attached to VM \(users[0].0.vmid) as \(users[0].1)"
                }
            }
            return .with {
                $0.volume.volumeID = handle.description
                $0.volume.capacityBytes = size
                $0.volume.accessibleTopology = handle.accessibleTopology(on: storage)
                $0.status.publishedNodeIds = users.map(\.0.name).sorted()
                $0.status.volumeCondition = condition
            }
        } catch {
            throw rpcError(error, "ControllerGetVolume \(request.volumeID)")
        }
    }

    /// The volume if it exists and DeleteVolume has not come for it: one whose
    /// data is kept only for its snapshots (hidden from ListVolumes too) is gone
    /// to the CO. Only storages that snapshot natively can keep one, so only
    /// they cost the look for its source VM.
    func liveVolume(_ volumeID: String) async throws -> (handle: VolumeHandle, storage: StorageRef, size: Int64)? {
        guard let found = try await volumes.existing(volumeID) else { return nil }
        guard NativeSnapshotSupport.available(storageType: found.storage.type, volumeName: found.handle.fileName, attached: false)
        else { return found }
        return try await volumes.isKeptForSnapshots(found.handle.description, cluster: found.handle.cluster) ? nil : found
    }

    // MARK: - Validate, list, capacity

    func validate(_ request: Csi_V1_ValidateVolumeCapabilitiesRequest) async throws -> Csi_V1_ValidateVolumeCapabilitiesResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard !request.volumeCapabilities.isEmpty else { throw RPCError(.invalidArgument, "volume_capabilities is required") }
        // A capability that lacks what every capability carries is a bad request;
        // one this driver cannot serve is answered below as not confirmed.
        for (index, capability) in request.volumeCapabilities.enumerated() {
            if let malformation = CapabilityCheck.malformation(of: capability) {
                throw RPCError(.invalidArgument, "volume_capabilities[\(index)]: \(malformation)")
            }
        }
        do {
            guard try await liveVolume(request.volumeID) != nil else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
        } catch {
            throw rpcError(error, "ValidateVolumeCapabilities \(request.volumeID)")
        }
        if let problem = request.volumeCapabilities.lazy.compactMap(CapabilityCheck.problem(with:)).first {
            return .with { $0.message = problem }
        }
        return .with {
            $0.confirmed.volumeCapabilities = request.volumeCapabilities
            $0.confirmed.volumeContext = request.volumeContext
            $0.confirmed.parameters = request.parameters
            $0.confirmed.mutableParameters = request.mutableParameters
        }
    }

    func listVolumes(_ request: Csi_V1_ListVolumesRequest) async throws -> Csi_V1_ListVolumesResponse {
        let start = try Paging.start(request.startingToken, maxEntries: request.maxEntries, what: "ListVolumes")
        do {
            let entries = try await allVolumes()
            let page = try Paging.page(count: entries.count, start: start, maxEntries: request.maxEntries, what: "ListVolumes")
            return .with {
                $0.entries = Array(entries[page.range])
                $0.nextToken = page.next
            }
        } catch {
            throw rpcError(error, "ListVolumes")
        }
    }

    /// Every volume the driver owns, sorted by id, with the nodes it is published to.
    private func allVolumes() async throws -> [Csi_V1_ListVolumesResponse.Entry] {
        var entries: [Csi_V1_ListVolumesResponse.Entry] = []
        for cluster in config.clusters.map(\.name) {
            let client = try volumes.client(cluster)
            let resources = try await volumes.resources(cluster, fresh: true)
            var published: [String: [String]] = [:]
            // Volumes DeleteVolume came for, kept only for their native snapshots: not listed.
            var kept = Set<String>()
            for (vm, vmConfig) in try await volumes.scanConfigs(volumes.vms(cluster).filter { !ProxmoxVolumes.isCopyVM($0) }) {
                if ProxmoxVolumes.isSourceVM(vm) {
                    if let source = SourceVM.parse(vm, config: vmConfig), source.deleted { kept.insert(source.volid) }
                    continue
                }
                for (key, value) in vmConfig.values where ProxmoxVolumes.isDiskKey(key) && !key.hasPrefix("unused") {
                    published["\(vm.node)|\(ProxmoxVolumes.volid(of: value))", default: []].append(vm.name)
                }
            }
            var seenShared = Set<String>()
            for resource in resources where resource.type == "storage" && resource.content.contains("images") {
                guard let storage = resource.storage else { continue }
                if resource.shared, !seenShared.insert(storage).inserted { continue }
                for volume in try await client.volumes(node: resource.node, storage: storage, vmid: config.ownerVMID)
                    where !kept.contains(volume.volid) {
                    let name = Volid.volumeName(of: volume.volid)
                    let handle = VolumeHandle(cluster: cluster, node: resource.shared ? nil : resource.node, storage: storage, volume: name)
                    let nodes = resource.shared
                        ? published.filter { $0.key.hasSuffix("|\(volume.volid)") }.flatMap(\.value)
                        : published["\(resource.node)|\(volume.volid)"] ?? []
                    entries.append(.with {
                        $0.volume.volumeID = handle.description
                        $0.volume.capacityBytes = volume.size
                        $0.status.publishedNodeIds = nodes.sorted()
                    })
                }
            }
        }
        // Restored and cloned volumes, owned by their record VMs.
        for record in try await volumes.copyVMs(.volume) {
            guard let volid = record.volid, record.settled else { continue }
            let storageID = Volid.storage(of: volid)
            guard let storage = try await volumes.storage(record.vm.cluster, storageID) else { continue }
            let name = Volid.volumeName(of: volid)
            let handle = VolumeHandle(cluster: record.vm.cluster, node: storage.shared ? nil : record.vm.node, storage: storageID, volume: name)
            let size = try await volumes.size(of: handle, storage: storage) ?? 0
            let users = try await volumes.attachments(of: handle, storage: storage).filter { !ProxmoxVolumes.isHolder($0.0) }
            entries.append(.with {
                $0.volume.volumeID = handle.description
                $0.volume.capacityBytes = size
                $0.status.publishedNodeIds = users.map(\.0.name).sorted()
            })
        }
        return entries.sorted { $0.volume.volumeID < $1.volume.volumeID }
    }

    func getCapacity(_ request: Csi_V1_GetCapacityRequest) async throws -> Csi_V1_GetCapacityResponse {
        for (index, capability) in request.volumeCapabilities.enumerated() {
            if let problem = CapabilityCheck.problem(with: capability) {
                throw RPCError(.invalidArgument, "volume_capabilities[\(index)]: \(problem)")
            }
        }
        let cluster = request.accessibleTopology.segments[TopologyKey.region] ?? config.clusters[0].name
        let zone = request.accessibleTopology.segments[TopologyKey.zone]
        do {
            // Without a storage, report the largest free space of any storage for disk images.
            let storages: [StorageRef]
            if request.parameters.isEmpty {
                let ids = Set(try await volumes.resources(cluster).filter { $0.type == "storage" && $0.content.contains("images") }.compactMap(\.storage))
                storages = try await ids.asyncCompactMap { try await volumes.storage(cluster, $0) }
            } else {
                let parameters = try VolumeParameters.parse(request.parameters, config: config, cluster: cluster)
                storages = try await volumes.storage(cluster, parameters.storage).map { [$0] } ?? []
            }
            let available = storages.flatMap { storage in
                storage.available.filter { zone == nil || $0.key == zone }.map(\.value)
            }.max() ?? 0
            return .with { $0.availableCapacity = available }
        } catch {
            throw rpcError(error, "GetCapacity")
        }
    }
}
