import CSIProto
import FoundationEssentials
import ProxmoxAPI
import ProxmoxDomain
import SwiftProtobuf
import UnaryGRPC

// ControllerExpand and ControllerModify: growing a volume and changing its disk options.
extension ControllerService {
    // MARK: - Expand

    /// Grows the disk: through the VM it is attached to (online), else through
    /// the node's holder VM (offline). The filesystem is grown by the node.
    func expand(_ request: Csi_V1_ControllerExpandVolumeRequest) async throws -> Csi_V1_ControllerExpandVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard request.hasCapacityRange else { throw RPCError(.invalidArgument, "capacity_range is required") }
        let bytes = try Self.size(for: request.capacityRange)
        // A block volume has no filesystem for the node to grow.
        let isBlock: Bool
        if case .block? = request.volumeCapability.accessType { isBlock = true } else { isBlock = false }
        let needsNode = !isBlock
        let what = "ControllerExpandVolume \(request.volumeID)"
        do {
            guard let (handle, storage, current) = try await volumes.existing(request.volumeID) else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
            if current >= bytes {
                // Already that large (a retry, or a request to shrink, which the limit forbids).
                if request.capacityRange.limitBytes > 0, current > request.capacityRange.limitBytes {
                    throw RPCError(.outOfRange, "volume is \(current) bytes, more than limit_bytes \(request.capacityRange.limitBytes); shrinking is not supported")
                }
                return .with { $0.capacityBytes = current; $0.nodeExpansionRequired = needsNode }
            }
            if let free = storage.available[storage.node(for: handle)], bytes - current > free {
                throw RPCError(.outOfRange, "storage \(storage.id) has \(free) bytes free; growing by \(bytes - current) does not fit")
            }
            let size = "\(bytes >> 20)M"
            let client = try volumes.client(handle.cluster)
            var found = try await volumes.attachments(of: handle, storage: storage)
            if found.isEmpty {
                // Grown offline, a VM running it would never learn the new size (only an online
                // resize tells QEMU): a disk another tool attached lately must not be missed.
                found = try await volumes.attachments(of: handle, storage: storage, fresh: true)
            }
            let attachments = try await volumes.releaseFromHolders(handle, storage: storage, attachments: found)
            if let (vm, key) = attachments.first {
                try await volumes.changingVM(vm) {
                    try await client.resize(node: vm.node, vmid: vm.vmid, disk: key, size: size)
                }
            } else {
                // Detached (a restored volume too: its record VM holds it only as unused0, which resize cannot name).
                let node = storage.node(for: handle)
                try await volumes.withHolder(handle, storage: storage, node: node) { holder, key in
                    try await client.resize(node: holder.node, vmid: holder.vmid, disk: key, size: size)
                }
            }
            volumes.invalidate(handle.cluster)
            return .with { $0.capacityBytes = bytes; $0.nodeExpansionRequired = needsNode }
        } catch {
            throw rpcError(error, what)
        }
    }

    // MARK: - ModifyVolume

    /// Changes a volume's mutable options (VolumeAttributesClass): recorded for
    /// every later attach, and applied at once to the VM it is attached to.
    func modify(_ request: Csi_V1_ControllerModifyVolumeRequest) async throws -> Csi_V1_ControllerModifyVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard !request.mutableParameters.isEmpty else {
            throw RPCError(.invalidArgument, "mutable_parameters is required (the VolumeAttributesClass's parameters)")
        }
        do {
            guard let (handle, storage, _) = try await volumes.existing(request.volumeID) else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
            try VolumeParameters.checkMutable(request.mutableParameters, config: config, cluster: handle.cluster)
            let node = storage.node(for: handle)
            try await volumes.recordOptions(request.mutableParameters, volumeID: request.volumeID, cluster: handle.cluster, node: node)

            let recorded = try await volumes.copyVM(.options, csiName: request.volumeID, cluster: handle.cluster)?.options
                ?? request.mutableParameters
            // Only the options the recorded keys set: the others stay as the StorageClass made them
            // (a later publish merges the same way), defaults included.
            let replaced = Set(recorded.keys.flatMap { VolumeParameters.diskOptionNames[$0] ?? [] })
            let changed = try VolumeParameters.parse(recorded.merging(["storage": handle.storage]) { a, _ in a },
                                                     config: config, cluster: handle.cluster).diskOptions.filter { replaced.contains($0.0) }
            let volid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
            for (vm, _) in try await volumes.attachments(of: handle, storage: storage) where !ProxmoxVolumes.isHolder(vm) {
                try await volumes.editConfig(vm) { draft in
                    guard let (key, value) = ProxmoxVolumes.disks(holding: volid, in: draft.values).first else { return }
                    let kept = value.split(separator: ",").dropFirst().filter { option in
                        let name = String(option.split(separator: "=").first ?? "")
                        return !replaced.contains(name) && name != "size"
                    }.map(String.init)
                    draft.values[key] = ([volid] + kept + changed.map { "\($0.0)=\($0.1)" }).joined(separator: ",")
                }
            }
            return .init()
        } catch {
            throw rpcError(error, "ControllerModifyVolume \(request.volumeID)")
        }
    }
}
