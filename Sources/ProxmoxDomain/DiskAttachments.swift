import ProxmoxAPI

/// A volume as a disk of a VM: its slot and its config line.
package struct AttachedDisk: Sendable, Equatable {
    /// The config key: `scsi3`, `virtio0`.
    package var slot: String
    /// The line as Proxmox holds it: `<volid>,serial=…,wwn=…,…`.
    package var line: String

    package init(slot: String, line: String) {
        (self.slot, self.line) = (slot, line)
    }

    package var bus: DiskBus? { DiskBus.allCases.first { slot.hasPrefix($0.rawValue) } }

    /// The slot's number: qemu-server puts scsiN at LUN N (print_drivedevice_full).
    package var index: Int? { bus.flatMap { Int(slot.dropFirst($0.rawValue.count)) } }

    /// An option of the line (`serial`, `wwn`), nil when it has none.
    package func option(_ name: String) -> String? {
        line.split(separator: ",").dropFirst().first { $0.hasPrefix(name + "=") }.map { String($0.dropFirst(name.count + 1)) }
    }
}

/// Attaching a volume to a VM and detaching it: which slot it takes, what
/// one batched write holds, and when Proxmox has really done it.
extension ProxmoxVolumes {
    /// Puts the disk `diskValue` (whose volid is `volid`) into the VM's first
    /// free slot of `bus`, or finds it already there, and returns the disk as
    /// the VM holds it once the running VM has it: a line another tool wrote
    /// (proxmox-csi-plugin's, with its own WWN and no serial) is kept as it is. Refuses a volume attached with the other
    /// read-only flag (`exists`), and a VM with every slot taken (`exhausted`).
    package func attach(_ volid: String, as diskValue: String, readonly: Bool, bus: DiskBus, to vm: VMRef) async throws -> AttachedDisk {
        let written = try await editConfig(vm) { draft in
            if let (key, value) = Self.disks(holding: volid, in: draft.values).first {
                let attachedReadonly = value.split(separator: ",").contains("ro=1")
                guard attachedReadonly == readonly else {
                    throw DomainError.exists("volume is attached to VM \(vm.vmid) as \(key) with readonly=\(attachedReadonly)")
                }
                if draft.config.values[key] == nil {
                    draft.resend.insert(key)  // pending only: its hot-plug is tried again
                } else if draft.config.pendingDelete.contains(key) {
                    draft.revert.insert(key)  // a detach left pending: keep the disk instead
                }
                return  // otherwise already there: publishing again changes nothing
            }
            guard let slot = bus.slots.first(where: draft.isFree) else {
                // A detach in this batch frees one: take it in the next write.
                if bus.slots.contains(where: draft.isFreedInThisBatch) { throw ConfigBatches.NextWrite() }
                throw DomainError.exhausted("VM \(vm.vmid) has no free \(bus.rawValue) slot (\(bus.slotCount) in use)")
            }
            draft.values[slot] = diskValue
        }
        return try await confirmAttached(volid, to: written)
    }

    /// The VM's config after a batch: as the write left it when that is
    /// certain, else read again (a VM on no node is nil).
    private func config(after outcome: ConfigOutcome) async throws -> (VMRef, VMConfig)? {
        if let config = outcome.config { return (outcome.vm, config) }
        return try await currentConfig(outcome.vm)
    }

    /// Answers only once the disk is in the VM's current config, which the
    /// running VM has: Proxmox leaves an attach it could not hot-plug pending
    /// (qemu-server vmconfig_hotplug_pending), and the VM would get the disk
    /// only when it restarts. The way aws-ebs-csi-driver waits for the
    /// attachment state before answering.
    private func confirmAttached(_ volid: String, to written: ConfigOutcome) async throws -> AttachedDisk {
        guard let (vm, after) = try await config(after: written) else {
            throw DomainError.notFound("VM \(written.vm.vmid) (\(written.vm.name)) is on no Proxmox node any more")
        }
        let keys = Self.disks(holding: volid, in: after)
        if let attached = keys.first(where: { after.values[$0] != nil && after.isSettled($0) }) {
            return AttachedDisk(slot: attached, line: after.values[attached]!)
        }
        guard let key = keys.first else {
            throw DomainError.notYet("the attach of \(volid) to VM \(vm.vmid) (\(vm.name)) did not reach its config; try again")
        }
        if let hotplug = after.hotplugWithoutDisk {
            // Nothing is left for the VM's next start: the pending attach is dropped.
            _ = try await editConfig(vm) { draft in draft.revert.insert(key) }
            throw DomainError.conflict("VM \(vm.vmid) (\(vm.name)) has hotplug \"\(hotplug)\", which leaves out disk: "
                + "Proxmox cannot attach a disk while it runs. Add disk to the VM's hotplug option "
                + "(qm set \(vm.vmid) --hotplug \(hotplug.isEmpty || hotplug == "0" ? "" : hotplug + ",")disk)")
        }
        throw DomainError.notYet("Proxmox left the attach of \(volid) to VM \(vm.vmid) (\(vm.name)) as \(key) pending: "
            + "the hot-plug did not happen (the VM's task log says why); it is tried again on the next call")
    }

    /// Takes every disk holding `volid` out of the VM and answers once neither
    /// the current config nor a pending change holds it. A VM on no node holds nothing.
    package func detach(_ volid: String, from vm: VMRef) async throws {
        let written: ConfigOutcome
        do {
            written = try await editConfig(vm) { draft in
                for key in Self.disks(holding: volid, in: draft.config) { draft.values[key] = nil }
            }
        } catch ProxmoxError.notFound {
            return  // the VM is on no node (the batch looked afresh): nothing is attached any more
        }
        try await confirmDetached(volid, from: written)
    }

    /// A detach Proxmox could not hot-unplug stays pending while the running VM keeps the disk.
    private func confirmDetached(_ volid: String, from written: ConfigOutcome) async throws {
        guard let (vm, after) = try await config(after: written) else { return }  // the VM is gone: nothing is attached
        guard let key = Self.disks(holding: volid, in: after).first else { return }
        if after.values[key] != nil, let hotplug = after.hotplugWithoutDisk {
            throw DomainError.conflict("VM \(vm.vmid) (\(vm.name)) has hotplug \"\(hotplug)\", which leaves out disk: "
                + "the volume stays attached as \(key) until the VM restarts (Proxmox keeps the detach pending). "
                + "Add disk to the VM's hotplug option or restart the VM")
        }
        throw DomainError.notYet("volume \(volid) is still attached to VM \(vm.vmid) (\(vm.name)) as \(key): "
            + "Proxmox left the detach pending (the hot-unplug did not happen; the VM's task log says why); it is tried again on the next call")
    }
}

extension VMConfig {
    /// The VM's `hotplug` option when it leaves out disks (qemu-server
    /// parse_hotplug_features: default network,disk,usb; 1 = that; 0 = none).
    package var hotplugWithoutDisk: String? {
        let hotplug = values["hotplug"] ?? "network,disk,usb"
        if hotplug == "1" { return nil }
        return hotplug.split(separator: ",").contains("disk") ? nil : hotplug
    }
}
