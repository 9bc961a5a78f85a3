import CSIProto
import Foundation
import ProxmoxAPI
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
            guard let (handle, storage, _) = try await volumes.existing(request.volumeID) else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
            guard let vm = try await volumes.vm(forNodeID: request.nodeID) else {
                throw RPCError(.notFound, "node \(request.nodeID): no Proxmox VM with that name or vmid")
            }
            guard vm.cluster == handle.cluster else {
                throw RPCError(.failedPrecondition, "volume is in cluster \(handle.cluster), node \(request.nodeID) in \(vm.cluster)")
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
            let bus = parameters.bus
            let slot = try await attach(handle, storage: storage, to: vm, bus: bus, readonly: request.readonly,
                                        options: parameters.diskOptions)
            var publishContext = ["serial": VolumeNaming.serial(for: handle), "bus": bus]
            if bus == "scsi" {
                publishContext["wwn"] = VolumeNaming.wwn(for: handle)
                // qemu-server puts scsiN at LUN N (print_drivedevice_full): the node scans just that LUN
                // if the guest missed the hot-plug event.
                if let lun = Int(slot.dropFirst(bus.count)) { publishContext["lun"] = String(lun) }
            }
            return .with { $0.publishContext = publishContext }
        } catch {
            throw rpcError(error, what)
        }
    }

    /// Returns the slot (config key) the volume is in.
    private func attach(_ handle: VolumeHandle, storage: StorageRef, to vm: VMRef, bus: String, readonly: Bool,
                        options: [(String, String)]) async throws -> String {
        let volid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
        var value = [volid, "serial=\(VolumeNaming.serial(for: handle))"]
        if bus == "scsi" { value.append("wwn=\(VolumeNaming.wwn(for: handle))") }
        value += options.map { "\($0.0)=\($0.1)" }
        if readonly { value.append("ro=1") }
        let diskValue = value.joined(separator: ",")
        let written = try await volumes.editConfig(vm) { draft in
            if let (key, value) = ProxmoxVolumes.disks(holding: volid, in: draft.values).first {
                let attachedReadonly = value.split(separator: ",").contains("ro=1")
                guard attachedReadonly == readonly else {
                    throw RPCError(.alreadyExists, "volume is attached to VM \(vm.vmid) as \(key) with readonly=\(attachedReadonly)")
                }
                if draft.config.values[key] == nil {
                    draft.resend.insert(key)  // pending only: its hot-plug is tried again
                } else if draft.config.pendingDelete.contains(key) {
                    draft.revert.insert(key)  // a detach left pending: keep the disk instead
                }
                return  // otherwise already there: publishing again changes nothing
            }
            let slots = DiskBus(rawValue: bus)?.slots ?? []
            let limit = slots.count
            guard let slot = slots.first(where: draft.isFree) else {
                // A detach in this batch frees one: take it in the next write.
                if slots.contains(where: draft.isFreedInThisBatch) { throw ConfigBatches.NextWrite() }
                throw RPCError(.resourceExhausted, "VM \(vm.vmid) has no free \(bus) slot (\(limit) in use)")
            }
            draft.values[slot] = diskValue
        }
        return try await confirmAttached(volid, to: written)
    }

    /// Publish answers OK only once the disk is in the VM's current config,
    /// which the running VM has: Proxmox leaves an attach it could not
    /// hot-plug pending (qemu-server vmconfig_hotplug_pending), and the VM
    /// would get the disk only when it restarts. The way aws-ebs-csi-driver
    /// waits for the attachment state before answering.
    private func confirmAttached(_ volid: String, to written: VMRef) async throws -> String {
        guard let (vm, after) = try await volumes.currentConfig(written) else {
            throw RPCError(.notFound, "VM \(written.vmid) (\(written.name)) is on no Proxmox node any more")
        }
        let keys = ProxmoxVolumes.disks(holding: volid, in: after)
        if let attached = keys.first(where: { after.values[$0] != nil && after.isSettled($0) }) { return attached }
        guard let key = keys.first else {
            throw RPCError(.unavailable, "the attach of \(volid) to VM \(vm.vmid) (\(vm.name)) did not reach its config; try again")
        }
        if let hotplug = Self.hotplugWithoutDisk(after) {
            // Nothing is left for the VM's next start: the pending attach is dropped.
            _ = try await volumes.editConfig(vm) { draft in draft.revert.insert(key) }
            throw RPCError(.failedPrecondition, "VM \(vm.vmid) (\(vm.name)) has hotplug \"\(hotplug)\", which leaves out disk: "
                + "Proxmox cannot attach a disk while it runs. Add disk to the VM's hotplug option "
                + "(qm set \(vm.vmid) --hotplug \(hotplug.isEmpty || hotplug == "0" ? "" : hotplug + ",")disk)")
        }
        throw RPCError(.unavailable, "Proxmox left the attach of \(volid) to VM \(vm.vmid) (\(vm.name)) as \(key) pending: "
            + "the hot-plug did not happen (the VM's task log says why); it is tried again on the next call")
    }

    /// The VM's `hotplug` option when it leaves out disks (qemu-server
    /// parse_hotplug_features: default network,disk,usb; 1 = that; 0 = none).
    static func hotplugWithoutDisk(_ config: VMConfig) -> String? {
        let hotplug = config.values["hotplug"] ?? "network,disk,usb"
        if hotplug == "1" { return nil }
        return hotplug.split(separator: ",").contains("disk") ? nil : hotplug
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
                let written: VMRef
                do {
                    written = try await volumes.editConfig(vm) { draft in
                        for key in ProxmoxVolumes.disks(holding: volid, in: draft.config) { draft.values[key] = nil }
                    }
                } catch ProxmoxError.notFound {
                    continue  // the VM is on no node (the batch looked afresh): nothing is attached any more
                }
                try await confirmDetached(volid, from: written)
            }
            return .init()
        } catch {
            throw rpcError(error, "ControllerUnpublishVolume \(request.volumeID) from \(request.nodeID)")
        }
    }

    /// Unpublish answers OK only when neither the current config nor a
    /// pending change holds the disk: a detach Proxmox could not hot-unplug
    /// stays pending while the running VM keeps the disk.
    private func confirmDetached(_ volid: String, from written: VMRef) async throws {
        guard let (vm, after) = try await volumes.currentConfig(written) else { return }  // the VM is gone: nothing is attached
        guard let key = ProxmoxVolumes.disks(holding: volid, in: after).first else { return }
        if after.values[key] != nil, let hotplug = Self.hotplugWithoutDisk(after) {
            throw RPCError(.failedPrecondition, "VM \(vm.vmid) (\(vm.name)) has hotplug \"\(hotplug)\", which leaves out disk: "
                + "the volume stays attached as \(key) until the VM restarts (Proxmox keeps the detach pending). "
                + "Add disk to the VM's hotplug option or restart the VM")
        }
        throw RPCError(.unavailable, "volume \(volid) is still attached to VM \(vm.vmid) (\(vm.name)) as \(key): "
            + "Proxmox left the detach pending (the hot-unplug did not happen; the VM's task log says why); it is tried again on the next call")
    }
}
