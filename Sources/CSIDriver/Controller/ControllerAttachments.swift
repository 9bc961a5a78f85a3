import CSIProto
import FoundationEssentials
import ProxmoxAPI
import ProxmoxDomain
import SwiftProtobuf
import UnaryGRPC

// ControllerPublish and ControllerUnpublish: attaching a volume to a node's VM and detaching it.
extension ControllerService {
    // MARK: - Publish / unpublish

    func publish(_ request: Csi_V1_ControllerPublishVolumeRequest) async throws -> Csi_V1_ControllerPublishVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard !request.nodeID.isEmpty else { throw RPCError(.invalidArgument, "node_id is required") }
        guard request.hasVolumeCapability else { throw RPCError(.invalidArgument, "volume_capability is required") }
        try CapabilityCheck.require([request.volumeCapability], field: "volume_capability")
        let what = "ControllerPublishVolume \(request.volumeID) to \(request.nodeID)"
        do {
            // Whether the volume exists is asked only if the attach fails: qemu-server refuses
            // a disk whose volume is not there (API2/Qemu.pm create_disks: "volume … does not
            // exist", before anything is written), so a read before every attach is not needed.
            guard let (handle, storage) = try await volumes.locate(request.volumeID) else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
            guard let vm = try await volumes.vm(forNodeID: request.nodeID) else {
                throw RPCError(.notFound, "node \(request.nodeID): no Proxmox VM with that name or vmid")
            }
            guard vm.cluster == handle.cluster else {
                throw RPCError(.failedPrecondition, "volume is in cluster \(handle.cluster), node \(request.nodeID) in \(vm.cluster)")
            }
            if handle.node == nil, storage.available[vm.node] == nil {
                throw RPCError(.failedPrecondition, "storage \(storage.id) is not available on Proxmox node \(vm.node), "
                    + "where VM \(vm.vmid) runs (its nodes: \(storage.available.keys.sorted().joined(separator: ", ")))")
            }
            if let node = handle.node, node != vm.node {
                throw RPCError(.failedPrecondition, "volume lives on local storage of Proxmox node \(node); "
                    + "VM \(vm.vmid) runs on \(vm.node)")
            }
            // The context CreateVolume returned carries the StorageClass's disk options;
            // volumes made by other drivers carry other keys, which are ignored.
            var context = request.volumeContext.filter { VolumeParameters.knownKeys.contains($0.key) && $0.key != "profile" }
            context["storage"] = handle.storage
            // Options changed by ControllerModifyVolume since creation win.
            if let recorded = try await volumes.copyVM(.options, csiName: request.volumeID, cluster: handle.cluster, fresh: false) {
                context.merge(recorded.options) { $1 }
            }
            let parameters = try VolumeParameters.parse(context, config: config, cluster: handle.cluster)
            let attachments = try await volumes.attachments(of: handle, storage: storage)
            let elsewhere = try await volumes.releaseFromHolders(handle, storage: storage, attachments: attachments).filter { $0.0 != vm }
            if let (other, key) = elsewhere.first {
                throw RPCError(.failedPrecondition, "volume is attached to VM \(other.vmid) (\(other.name)) as \(key)")
            }
            let disk: AttachedDisk
            do {
                disk = try await attach(handle, storage: storage, to: vm, bus: parameters.bus, readonly: request.readonly,
                                        options: parameters.diskOptions)
            } catch let error as ProxmoxError {
                if try await volumes.size(of: handle, storage: storage) == nil {
                    throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
                }
                throw error
            }
            var publishContext = Self.publishContext(for: disk)
            if let owed = parameters.resizeSizeBytes, owed > (try await volumes.size(of: handle, storage: storage) ?? owed) {
                try await grow(disk, of: vm, to: owed, cluster: handle.cluster)
                publishContext["resizeRequired"] = "true"
            }
            return .with { $0.publishContext = publishContext }
        } catch {
            throw rpcError(error, what)
        }
    }

    /// What the node looks for: the identity the disk's config line carries (ours
    /// carries our serial and WWN; one proxmox-csi-plugin attached carries its
    /// slot-derived WWN and no serial), its bus, and on scsi its LUN, which the
    /// node scans alone if the guest missed the hot-plug event.
    static func publishContext(for disk: AttachedDisk) -> [String: String] {
        var context: [String: String] = [:]
        if let bus = disk.bus { context["bus"] = bus.rawValue }
        if let serial = disk.option("serial") { context["serial"] = serial }
        if disk.bus == .scsi {
            if let wwn = disk.option("wwn") { context["wwn"] = wwn }
            if let lun = disk.index { context["lun"] = String(lun) }
        }
        return context
    }

    /// The growth proxmox-csi-plugin left owed on a volume it restored from a
    /// smaller snapshot (volume context `resizeSizeBytes`): it grew the disk at
    /// its publish and told the node, with `resizeRequired`, to grow the filesystem.
    private func grow(_ disk: AttachedDisk, of vm: VMRef, to bytes: Int64, cluster: String) async throws {
        let client = try volumes.client(cluster)
        let size = "\((bytes + Self.mebibyte - 1) / Self.mebibyte)M"
        try await volumes.changingVM(vm) {
            try await client.resize(node: vm.node, vmid: vm.vmid, disk: disk.slot, size: size)
        }
        volumes.invalidate(cluster)
    }

    private func attach(_ handle: VolumeHandle, storage: StorageRef, to vm: VMRef, bus: String, readonly: Bool,
                        options: [(String, String)]) async throws -> AttachedDisk {
        let volid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
        var value = [volid, "serial=\(VolumeNaming.serial(for: handle))"]
        if bus == "scsi" { value.append("wwn=\(VolumeNaming.wwn(for: handle))") }
        value += options.map { "\($0.0)=\($0.1)" }
        if readonly { value.append("ro=1") }
        // VolumeParameters accepts only the buses DiskBus has.
        return try await volumes.attach(volid, as: value.joined(separator: ","), readonly: readonly, bus: DiskBus(rawValue: bus)!, to: vm)
    }

    func unpublish(_ request: Csi_V1_ControllerUnpublishVolumeRequest) async throws -> Csi_V1_ControllerUnpublishVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        do {
            // A volume or VM that no longer exists is not attached: done.
            guard let (handle, storage) = try await volumes.locate(request.volumeID) else { return .init() }
            let volid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
            // No node_id: detach from every node's VM (the spec's "unpublish from all nodes").
            let targets: [VMRef]
            if request.nodeID.isEmpty {
                targets = Array(Set(try await volumes.attachments(of: handle, storage: storage).map(\.0).filter { !ProxmoxVolumes.isHolder($0) }))
            } else {
                guard let vm = try await volumes.vm(forNodeID: request.nodeID) else { return .init() }
                targets = [vm]
            }
            for vm in targets.sorted(by: { $0.vmid < $1.vmid }) {
                try await volumes.detach(volid, from: vm)
            }
            return .init()
        } catch {
            throw rpcError(error, "ControllerUnpublishVolume \(request.volumeID) from \(request.nodeID)")
        }
    }
}
