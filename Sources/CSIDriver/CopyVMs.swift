import Foundation
import ProxmoxAPI
import UnaryGRPC

/// Proxmox copies a volume only into a VM (`import-from` when a disk is
/// added), and the copy is named and owned by that VM. So every copy the
/// driver makes lives in a stopped VM of its own:
/// - a snapshot: `csi-snap-<hash of the snapshot name>`, holding the copy as scsi0;
/// - a volume restored from a snapshot or cloned: `csi-vol-<hash of the volume name>`.
/// The VM's name makes creation idempotent; its description records what
/// it is (name, source, time), so a restarted controller finds everything.
/// Deleting the VM frees the copy: Proxmox frees the volumes a VM owns.
public struct CopyVM: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case snapshot = "csi-snap-", volume = "csi-vol-"
        /// Holds no disk: records a modified volume's options (ControllerModifyVolume).
        case options = "csi-opt-"
    }

    public var kind: Kind
    public var vm: VMRef
    /// The CSI name it was created for.
    public var csiName: String
    /// The CSI id of what was copied (a volume id, or a snapshot id).
    public var source: String
    public var createdAt: Int64
    /// The copy's volume id (`storage:vm-<vmid>-disk-0`), once the VM has it.
    public var volid: String?
    /// True while Proxmox is still copying (the VM is locked by its creation).
    public var copying: Bool
    /// For `.options`: the disk options recorded for the volume.
    public var options: [String: String] = [:]

    static func vmName(_ kind: Kind, csiName: String) -> String {
        kind.rawValue + String(sha256Hex(csiName).prefix(24))
    }

    static func description(_ kind: Kind, csiName: String, source: String, createdAt: Int64,
                            options: [String: String] = [:]) -> String {
        let what = switch kind { case .snapshot: "snapshot"; case .volume: "volume"; case .options: "volume options" }
        var text = "proxmox-csi \(what)\nname: \(csiName)\nsource: \(source)\ncreated: \(createdAt)\n"
        if !options.isEmpty {
            text += "options: " + options.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ";") + "\n"
        }
        return text + "Managed by proxmox-csi: do not start or edit."
    }

    /// Reads a copy VM from its config; nil when the config is not one.
    static func parse(_ vm: VMRef, config: VMConfig) -> CopyVM? {
        guard let kind = [Kind.snapshot, .volume, .options].first(where: { vm.name.hasPrefix($0.rawValue) }),
              let text = config["description"] else { return nil }
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces) }
        }
        guard let name = fields["name"], let source = fields["source"], vmName(kind, csiName: name) == vm.name else { return nil }
        let disk = config["scsi0"].map { ProxmoxVolumes.volid(of: $0) }
        var options: [String: String] = [:]
        for pair in (fields["options"] ?? "").split(separator: ";") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { options[String(parts[0])] = String(parts[1]) }
        }
        return CopyVM(kind: kind, vm: vm, csiName: name, source: source, createdAt: Int64(fields["created"] ?? "") ?? 0,
                      volid: disk, copying: config["lock"] != nil, options: options)
    }
}

extension ProxmoxVolumes {
    /// Whether a VM is one of the driver's copy or record VMs, by its name (they hold only their own disks).
    static func isCopyVM(_ vm: VMRef) -> Bool {
        [CopyVM.Kind.snapshot, .volume, .options].contains { vm.name.hasPrefix($0.rawValue) }
    }

    /// The copy VM made for `csiName`, if there is one.
    func copyVM(_ kind: CopyVM.Kind, csiName: String, cluster: String, fresh: Bool = true) async throws -> CopyVM? {
        let name = CopyVM.vmName(kind, csiName: csiName)
        guard let vm = try await vms(cluster, fresh: fresh).first(where: { $0.name == name }) else { return nil }
        let vmConfig: VMConfig
        do {
            vmConfig = try await client(vm.cluster).vmConfig(node: vm.node, vmid: vm.vmid)
        } catch ProxmoxError.notFound {
            return nil
        }
        if let copy = CopyVM.parse(vm, config: vmConfig) { return copy }
        // An earlier attempt's create is still running (Proxmox writes the description
        // when it ends): making another would leave twins. The caller's retry finds it done.
        if vmConfig["lock"] == "create" {
            throw RPCError(.aborted, "\(name) (VM \(vm.vmid)) is still being created by an earlier attempt; try again shortly")
        }
        return nil
    }

    /// Reads one copy VM; nil when it vanished or is not one.
    func copyVM(_ vm: VMRef) async throws -> CopyVM? {
        do {
            return CopyVM.parse(vm, config: try await client(vm.cluster).vmConfig(node: vm.node, vmid: vm.vmid))
        } catch ProxmoxError.notFound {
            return nil
        }
    }

    /// Every copy VM of a kind, in every cluster.
    func copyVMs(_ kind: CopyVM.Kind) async throws -> [CopyVM] {
        var out: [CopyVM] = []
        for cluster in config.clusters.map(\.name) {
            for vm in try await vms(cluster, fresh: true) where vm.name.hasPrefix(kind.rawValue) {
                if let copy = try await copyVM(vm) { out.append(copy) }
            }
        }
        return out
    }

    /// Creates a copy VM on `node` whose scsi0 is a full copy of `sourceVolid`
    /// on `storage`, and waits for the copy up to `wait` seconds.
    func createCopyVM(_ kind: CopyVM.Kind, csiName: String, source: String, cluster: String, node: String,
                      storage: String, sourceVolid: String, wait: Double) async throws -> CopyVM {
        let client = try client(cluster)
        let name = CopyVM.vmName(kind, csiName: csiName)
        let created = Int64(Date().timeIntervalSince1970)
        let (vmid, upid) = try await startCreatingVM(
            cluster: cluster, node: node, name: name,
            description: CopyVM.description(kind, csiName: csiName, source: source, createdAt: created),
            disks: [("scsi0", "\(storage):0,import-from=\(sourceVolid)")], what: "a VM for \(csiName)")
        if let upid {
            // A copy still running after `wait` is reported as not ready yet.
            do {
                try await client.waitForTask(upid, timeout: wait)
            } catch ProxmoxError.taskTimedOut {
            }
        }
        let vm = VMRef(cluster: cluster, node: node, vmid: vmid, name: name)
        guard let copy = try await copyVM(vm) else {
            throw RPCError(.internal, "the copy VM \(vmid) for \(csiName) vanished while it was being created")
        }
        return copy
    }

    /// Records options for a volume in its options VM (created on first use).
    func recordOptions(_ options: [String: String], volumeID: String, cluster: String, node: String) async throws {
        let client = try client(cluster)
        try await vmLocks.run("\(cluster)/options/\(volumeID)") {
            if let existing = try await self.copyVM(.options, csiName: volumeID, cluster: cluster) {
                let merged = existing.options.merging(options) { $1 }
                let text = CopyVM.description(.options, csiName: volumeID, source: volumeID, createdAt: existing.createdAt, options: merged)
                try await client.updateVMConfigSync(node: existing.vm.node, vmid: existing.vm.vmid, set: [("description", text)])
                return
            }
            let text = CopyVM.description(.options, csiName: volumeID, source: volumeID,
                                          createdAt: Int64(Date().timeIntervalSince1970), options: options)
            _ = try await self.createVM(cluster: cluster, node: node, name: CopyVM.vmName(.options, csiName: volumeID),
                                        description: text, what: "the options VM for \(volumeID)")
        }
    }

    /// Destroys a copy VM, and with it any twin: a create retried after the
    /// controller died can leave a second VM for the same name (Proxmox
    /// registers a VM only once its create task runs), and it goes with the first.
    func destroy(_ copy: CopyVM) async throws {
        var doomed = [copy.vm]
        for vm in try await vms(copy.vm.cluster, fresh: true) where vm.name == copy.vm.name && vm.vmid != copy.vm.vmid {
            if let twin = try await copyVM(vm), twin.kind == copy.kind, twin.csiName == copy.csiName { doomed.append(vm) }
        }
        for vm in doomed {
            do {
                try await client(vm.cluster).destroyVM(node: vm.node, vmid: vm.vmid, timeout: config.taskTimeout)
            } catch ProxmoxError.notFound {
                // Already gone.
            }
        }
        invalidate(copy.vm.cluster)
    }
}
