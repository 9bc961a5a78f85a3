import ProxmoxAPI

/// Proxmox resizes (and copies) volumes only as disks of a VM. For volumes
/// attached nowhere the driver uses a holder: a stopped VM per Proxmox node,
/// named `proxmox-csi-holder-<node>`, that carries a volume only for the
/// duration of one operation. Its vmid is not the owner vmid: a VM with the
/// owner's vmid would make Proxmox refuse to delete the driver's volumes.
extension ProxmoxVolumes {
    package static let holderPrefix = "proxmox-csi-holder-"

    package static func isHolder(_ vm: VMRef) -> Bool { vm.name.hasPrefix(holderPrefix) }

    /// The node's holder VM, created on first use.
    package func holder(cluster: String, node: String) async throws -> VMRef {
        let name = Self.holderPrefix + node
        // By current names: resources name a VM only after pvestatd's next round, and a
        // holder made a moment ago must not be made twice.
        if let existing = try await vmsByCurrentNames(cluster, fresh: false).first(where: { $0.name == name && $0.node == node }) {
            return existing
        }
        return try await vmLocks.run("\(cluster)/holder/\(node)") {
            if let existing = try await self.vmsByCurrentNames(cluster).first(where: { $0.name == name && $0.node == node }) {
                return existing
            }
            let vmid = try await self.createVM(
                cluster: cluster, node: node, name: name,
                description: "proxmox-csi: carries volumes during offline operations. Do not start or delete.",
                what: "the holder VM on node \(node)")
            return VMRef(cluster: cluster, node: node, vmid: vmid, name: name)
        }
    }

    package func vms(_ cluster: String, fresh: Bool) async throws -> [VMRef] {
        if fresh { invalidate(cluster) }
        return try await vms(cluster)
    }

    /// Runs `body` with the volume attached to the node's holder as `key`, and
    /// detaches it afterwards (also when `body` fails).
    package func withHolder<T: Sendable>(_ handle: VolumeHandle, storage: StorageRef, node: String,
                                 _ body: @Sendable (VMRef, String) async throws -> T) async throws -> T {
        let holder = try await holder(cluster: handle.cluster, node: node)
        let volid = handle.volid(ownerVMID: ownerVMID, storageType: storage.type)
        let client = try client(handle.cluster)
        return try await changingVM(holder) {
            let vmConfig = try await client.vmConfig(node: holder.node, vmid: holder.vmid)
            let key = Self.disks(holding: volid, in: vmConfig.values).first?.key
                ?? DiskBus.scsi.slots.first { vmConfig[$0] == nil }!
            if vmConfig[key] == nil {
                try await client.updateVMConfig(node: holder.node, vmid: holder.vmid, set: [(key, volid)], digest: vmConfig.digest)
            }
            do {
                let result = try await body(holder, key)
                try await client.updateVMConfig(node: holder.node, vmid: holder.vmid, delete: [key])
                return result
            } catch {
                try? await client.updateVMConfig(node: holder.node, vmid: holder.vmid, delete: [key])
                throw error
            }
        }
    }

    /// Drops the volume from holder VMs (left there by a crash mid-operation).
    package func releaseFromHolders(_ handle: VolumeHandle, storage: StorageRef, attachments: [(VMRef, String)]) async throws -> [(VMRef, String)] {
        let client = try client(handle.cluster)
        var remaining: [(VMRef, String)] = []
        for (vm, key) in attachments {
            if Self.isHolder(vm) {
                try await changingVM(vm) {
                    try await client.updateVMConfig(node: vm.node, vmid: vm.vmid, delete: [key])
                }
            } else {
                remaining.append((vm, key))
            }
        }
        return remaining
    }
}
