import FoundationEssentials
import ProxmoxAPI
import TextSupport

/// Proxmox copies a volume only into a VM (`import-from` when a disk is
/// added), and the copy is named and owned by that VM. So every copy the
/// driver makes lives in a stopped VM of its own:
/// - a snapshot: `csi-snap-<hash of the snapshot name>`;
/// - a volume restored from a snapshot or cloned: `csi-vol-<hash of the volume name>`.
/// The VM's name makes creation idempotent; its description records what
/// it is (name, source, time), so a restarted controller finds everything.
/// Deleting the VM frees the copy: Proxmox frees the volumes a VM owns.
///
/// A copy is made in steps, each found again by a retry or a restarted
/// controller: (1) the VM, named, with no disk — qemu-server's create_vm
/// writes a VM's name only with its final config, after its disks are
/// copied, so a VM created with its disk could not be found by name while
/// it copies; (2) the copy, added as scsi0 with `import-from` (a config
/// task that runs as long as the copy); (3) settled: scsi0 detached, which
/// leaves the owned copy as `unused0`, and `protection=1`. A settled copy is
/// in no VM's drives but the node's it is published to: starting, backing up
/// or destroying the copy VM (protection refuses that) cannot reach it.
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
    /// True while Proxmox is still copying (a create or import task runs).
    public var copying: Bool
    /// True once the copy is held only as `unused0` under protection (step 3).
    public var settled = false
    /// The digest of the config this was read from, for the next change of it.
    public var digest = ""
    /// For `.options`: the disk options recorded for the volume.
    public var options: [String: String] = [:]

    package static func vmName(_ kind: Kind, csiName: String) -> String {
        kind.rawValue + String(sha256Hex(csiName).prefix(24))
    }

    package static func description(_ kind: Kind, csiName: String, source: String, createdAt: Int64,
                            options: [String: String] = [:]) -> String {
        let what = switch kind { case .snapshot: "snapshot"; case .volume: "volume"; case .options: "volume options" }
        var text = "proxmox-csi \(what)\nname: \(csiName)\nsource: \(source)\ncreated: \(createdAt)\n"
        if !options.isEmpty {
            text += "options: " + options.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ";") + "\n"
        }
        return text + "Managed by proxmox-csi: do not start or edit."
    }

    /// Reads a copy VM from its config; nil when the config is not one.
    package static func parse(_ vm: VMRef, config: VMConfig) -> CopyVM? {
        guard let kind = [Kind.snapshot, .volume, .options].first(where: { vm.name.hasPrefix($0.rawValue) }),
              let text = config["description"] else { return nil }
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = parts[1].trimmed() }
        }
        guard let name = fields["name"], let source = fields["source"], vmName(kind, csiName: name) == vm.name else { return nil }
        let disk = (config["scsi0"] ?? config["unused0"]).map { ProxmoxVolumes.volid(of: $0) }
        var options: [String: String] = [:]
        for pair in (fields["options"] ?? "").split(separator: ";") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { options[String(parts[0])] = String(parts[1]) }
        }
        return CopyVM(kind: kind, vm: vm, csiName: name, source: source, createdAt: Int64(fields["created"] ?? "") ?? 0,
                      volid: disk, copying: config["lock"] != nil, settled: config["scsi0"] == nil && config["unused0"] != nil,
                      digest: config.digest, options: options)
    }
}

extension ProxmoxVolumes {
    /// Whether a VM is one of the driver's copy or record VMs, by its name (they hold only their own disks).
    package static func isCopyVM(_ vm: VMRef) -> Bool {
        [CopyVM.Kind.snapshot, .volume, .options].contains { vm.name.hasPrefix($0.rawValue) }
    }

    /// The copy VM made for `csiName`, if there is one (the lowest vmid when
    /// an old crash left twins). `fresh` asks each node for its VMs' names as
    /// their configs say now, not the cluster resources' up to 10 s old ones.
    package func copyVM(_ kind: CopyVM.Kind, csiName: String, cluster: String, fresh: Bool = true) async throws -> CopyVM? {
        try await copyVM(kind, csiName: csiName, among: fresh ? vmsAsConfigured(cluster) : vms(cluster))
    }

    /// The same, among VMs the caller listed already (one listing for several lookups).
    package func copyVM(_ kind: CopyVM.Kind, csiName: String, among candidates: [VMRef]) async throws -> CopyVM? {
        let name = CopyVM.vmName(kind, csiName: csiName)
        guard let (vm, vmConfig) = try await firstConfig(named: name, among: candidates),
              var copy = CopyVM.parse(vm, config: vmConfig) else { return nil }
        if copy.volid == nil, !copy.copying {
            // No disk yet: an import is running, or an earlier attempt stopped before starting it.
            copy.copying = try await !client(vm.cluster).activeTasks(node: vm.node, vmid: vm.vmid).isEmpty
        }
        return copy
    }

    /// The lowest-vmid candidate named `name` whose config says that name now,
    /// with its config. A listing's names may be stale (cluster resources' come
    /// from pvestatd, and a clone carries its source's tags until it settles), so
    /// the config decides; nil when no candidate's does.
    package func firstConfig(named name: String, among candidates: [VMRef]) async throws -> (VMRef, VMConfig)? {
        for vm in Set(candidates.filter { $0.name == name }).sorted(by: { $0.vmid < $1.vmid }) {
            guard let (found, config) = try await configFollowingMigration(vm) else { continue }
            // An unnamed config (a create or clone still running) goes by the listing's name, as before.
            guard config["name"] == nil || config["name"] == name else { continue }
            return (found, config)
        }
        return nil
    }

    /// The VM's config, read on the node a listing gave; a VM that migrated since
    /// (qemu-server answers notFound there) is read on the node fresh resources give.
    /// Nil when it is on no node: destroyed since the listing.
    private func configFollowingMigration(_ vm: VMRef) async throws -> (VMRef, VMConfig)? {
        let client = try client(vm.cluster)
        do {
            return (vm, try await client.vmConfig(node: vm.node, vmid: vm.vmid))
        } catch ProxmoxError.notFound {
            guard let moved = try await vms(vm.cluster, fresh: true).first(where: { $0.vmid == vm.vmid }), moved.node != vm.node else {
                return nil
            }
            var followed = vm
            (followed.node, followed.lock) = (moved.node, moved.lock)
            do {
                return (followed, try await client.vmConfig(node: moved.node, vmid: vm.vmid))
            } catch ProxmoxError.notFound {
                return nil
            }
        }
    }

    /// Every VM of the cluster under the name its config gives it now. The
    /// driver tags each VM it makes with its name (`createVM`, `settle`), and
    /// cluster resources give tags as the config has them, so one fresh resources
    /// read serves (`vmsByCurrentNames`). Until every driver VM of the cluster
    /// carries its tag (VMs an earlier version made: `tagDriverVMs` adds them
    /// once), the names come from each node's VM list, as their configs say them.
    package func vmsAsConfigured(_ cluster: String) async throws -> [VMRef] {
        // Resources as cached (at most cacheSeconds old): they cannot predate a VM this process
        // made (createVM, settle and restoreNative drop the cache when they end), and one another
        // process makes meanwhile is no less missed by a read that starts now.
        if taggedClusters.withLock({ $0.contains(cluster) }) { return try await vmsByCurrentNames(cluster, fresh: false) }
        let client = try client(cluster)
        let resources = try await resources(cluster, fresh: true)
        let nodes = Set(resources.filter { $0.type == "node" }.map(\.node)).sorted()
        let listed = try await withThrowingTaskGroup(of: [VMRef].self) { group in
            for node in nodes {
                group.addTask {
                    try await client.vmList(node: node).map { VMRef(cluster: cluster, node: node, vmid: $0.vmid, name: $0.name ?? "") }
                }
            }
            var all: [VMRef] = []
            for try await listed in group { all += listed }
            return all
        }
        await tagDriverVMs(listed, resources: resources, cluster: cluster)
        return listed
    }

    /// The VMs in fresh cluster resources, by name. A VM tagged with a driver name
    /// that resources do not show as its name is read for its name: one made
    /// within pvestatd's last round (its resources name is missing or a reused
    /// vmid's), or a clone that still carries its source's tag (restoreNative,
    /// until `settle` tags it). A settled driver VM's name is its tag: no read.
    /// Nor is one still being created or cloned (`lock` create/clone, current in
    /// resources): its config has no name until the task ends. A name read is
    /// kept while the VM's node, lock and tags stay as they were (the driver never
    /// renames a VM; settling retags it).
    package func vmsByCurrentNames(_ cluster: String, fresh: Bool = true) async throws -> [VMRef] {
        let client = try client(cluster)
        var settled: [VMRef] = []
        var unsure: [(vm: VMRef, signature: String)] = []
        for resource in try await resources(cluster, fresh: fresh) where resource.type == "qemu" {
            guard let vmid = resource.vmid else { continue }
            var vm = VMRef(cluster: cluster, node: resource.node, vmid: vmid, name: resource.name ?? "",
                           isTemplate: resource.template, lock: resource.lock)
            let driverTags = resource.tags.filter(Self.isDriverVMName)
            let signature = Self.nameSignature(node: resource.node, lock: resource.lock, tags: resource.tags)
            if driverTags.isEmpty || driverTags == [vm.name] || ["create", "clone"].contains(resource.lock ?? "") {
                // Named in resources now: what was read or given of its name is not needed any more.
                if driverTags == [vm.name] { namesRead.withLock { _ = $0.removeValue(forKey: vm.key) } }
                settled.append(vm)
            } else if let known = namesRead.withLock({ $0[vm.key] }), known.signature == signature,
                      ProcessInfo.processInfo.systemUptime - known.at < Self.nameKeptSeconds {
                vm.name = known.name
                settled.append(vm)
            } else {
                unsure.append((vm, signature))
            }
        }
        return try await withThrowingTaskGroup(of: VMRef?.self) { group in
            for (vm, signature) in unsure {
                group.addTask {
                    do {
                        // Concurrent lookups that see the VM alike share one read.
                        let incarnation = self.vmidIncarnations.withLock { $0[vm.key] ?? 0 }
                        let config = try await self.nameReads.read("\(vm.key)#\(incarnation)|\(signature)", asked: nil) {
                            try await client.vmConfig(node: vm.node, vmid: vm.vmid)
                        }
                        var named = vm
                        named.name = config["name"] ?? vm.name
                        if let name = config["name"], self.vmidIncarnations.withLock({ $0[vm.key] ?? 0 }) == incarnation {
                            self.namesRead.withLock { $0[vm.key] = (signature, name, ProcessInfo.processInfo.systemUptime) }
                        }
                        return named
                    } catch ProxmoxError.notFound {
                        return nil  // destroyed since the listing
                    }
                }
            }
            for try await named in group { if let named { settled.append(named) } }
            return settled
        }
    }

    /// What a name read is kept under: the VM's node, lock and tags as cluster resources show them.
    static func nameSignature(node: String, lock: String?, tags: [String]) -> String {
        "\(node)|\(lock ?? "")|\(tags.joined(separator: ";"))"
    }

    /// The name this process just gave a VM it made, kept as a read of its config would
    /// be: until pvestatd's next round names it in cluster resources (about 10 s), a
    /// lookup by name then needs no read of what the driver itself wrote.
    package func rememberName(_ name: String, cluster: String, node: String, vmid: Int, tags: [String]) {
        let signature = Self.nameSignature(node: node, lock: nil, tags: tags)
        namesRead.withLock { $0["\(cluster)/\(vmid)"] = (signature, name, ProcessInfo.processInfo.systemUptime) }
    }

    /// Names the driver gives its own VMs (copies, records, snapshot sources, holders).
    package static func isDriverVMName(_ name: String) -> Bool {
        [CopyVM.Kind.snapshot.rawValue, CopyVM.Kind.volume.rawValue, CopyVM.Kind.options.rawValue, SourceVM.prefix, holderPrefix]
            .contains { name.hasPrefix($0) }
    }

    /// Tags each driver VM in `listed` (names as configs say them) that resources show
    /// without its name as a tag; once none is left, lookups read resources alone. A VM
    /// that cannot be tagged now (locked) leaves the cluster to be swept again next time.
    private func tagDriverVMs(_ listed: [VMRef], resources: [ClusterResource], cluster: String) async {
        guard let client = try? client(cluster) else { return }
        let tags = Dictionary(resources.compactMap { r in r.vmid.map { ($0, r.tags) } }, uniquingKeysWith: { first, _ in first })
        var complete = true
        for vm in listed where Self.isDriverVMName(vm.name) && !(tags[vm.vmid] ?? []).contains(vm.name) {
            do {
                let value = ((tags[vm.vmid] ?? []) + [vm.name]).joined(separator: ";")
                try await client.updateVMConfigSync(node: vm.node, vmid: vm.vmid, set: [("tags", value)], delete: [])
            } catch {
                complete = false
            }
        }
        if complete { taggedClusters.withLock { _ = $0.insert(cluster) } }
    }

    /// Reads one copy VM; nil when it vanished or is not one.
    package func copyVM(_ vm: VMRef) async throws -> CopyVM? {
        do {
            return CopyVM.parse(vm, config: try await client(vm.cluster).vmConfig(node: vm.node, vmid: vm.vmid))
        } catch ProxmoxError.notFound {
            return nil
        }
    }

    /// Every copy VM of a kind, in every cluster.
    package func copyVMs(_ kind: CopyVM.Kind) async throws -> [CopyVM] {
        var out: [CopyVM] = []
        for cluster in clusterNames {
            for vm in try await vmsByCurrentNames(cluster) where vm.name.hasPrefix(kind.rawValue) {
                if let copy = try await copyVM(vm) { out.append(copy) }
            }
        }
        return out
    }

    /// Makes (or goes on making) the copy VM for `csiName`: a full copy of
    /// `sourceVolid` on `storage`, grown to `bytes` if smaller, settled as the
    /// VM's unused0 under protection. Waits for the copy up to `wait` seconds;
    /// a copy still running then is returned with `copying` (not ready yet).
    /// Steps already done — by this call's earlier attempts, or a controller
    /// that died — are found and not repeated; one call per name at a time.
    package func ensureCopyVM(_ kind: CopyVM.Kind, csiName: String, source: String, cluster: String, node: String,
                      storage: String, sourceVolid: String, bytes: Int64? = nil, format: String? = nil,
                      wait: Double) async throws -> CopyVM {
        let client = try client(cluster)
        let name = CopyVM.vmName(kind, csiName: csiName)
        return try await vmLocks.run("\(cluster)/copy/\(name)") {
            var copy: CopyVM
            if let found = try await self.copyVM(kind, csiName: csiName, cluster: cluster) {
                guard found.source == source else { return found }  // the caller refuses it
                copy = found
            } else {
                // A VM still being created has no name (create_vm writes it last): one that
                // another controller process started may be this copy. Its create is short.
                try await self.requireNoUnnamedCreation(cluster, mayBe: name)
                let vmid = try await self.createVM(
                    cluster: cluster, node: node, name: name,
                    description: CopyVM.description(kind, csiName: csiName, source: source, createdAt: Int64(Date().timeIntervalSince1970)),
                    what: "a VM for \(csiName)")
                guard let made = try await self.copyVM(VMRef(cluster: cluster, node: node, vmid: vmid, name: name)) else {
                    throw DomainError.inconsistent("the copy VM \(vmid) for \(csiName) vanished while it was being created")
                }
                copy = made
            }
            if copy.copying || copy.settled { return copy }
            let vm = copy.vm
            if copy.volid == nil {
                do {
                    // The digest: a copy another controller started meanwhile is not made twice.
                    // `format` (raw, qcow2 on file storages): qemu-server API2/Qemu.pm create_disks gives the
                    // drive's format to the import's destination (dest_info), which else keeps the source's.
                    let line = "\(storage):0,import-from=\(sourceVolid)" + (format.map { ",format=\($0)" } ?? "")
                    try await client.updateVMConfig(node: vm.node, vmid: vm.vmid, set: [("scsi0", line)],
                                                    delete: [], revert: [], digest: copy.digest, timeout: wait)
                } catch ProxmoxError.taskTimedOut {
                    copy.copying = true
                    return copy
                }
                guard let imported = try await self.copyVM(vm), imported.volid != nil else {
                    throw DomainError.notYet("the copy into VM \(vm.vmid) for \(csiName) did not appear; try again")
                }
                copy = imported
            }
            return try await self.settle(copy, bytes: bytes)
        }
    }

    /// Step 3: the copy grown to `bytes` if smaller, then held only as unused0 under protection.
    package func settle(_ copy: CopyVM, bytes: Int64?) async throws -> CopyVM {
        let vm = copy.vm
        let client = try client(vm.cluster)
        if let bytes, let volid = copy.volid,
           let size = try await client.volumes(node: vm.node, storage: Volid.storage(of: volid), vmid: vm.vmid)
               .first(where: { $0.volid == volid })?.size,
           size < bytes {
            try await client.resize(node: vm.node, vmid: vm.vmid, disk: "scsi0", size: "\(bytes >> 20)M")
        }
        // Settle: the VM owns the copy, so detaching scsi0 leaves it as unused0
        // (qemu-server vmconfig_register_unused_drive); protection refuses destroying the VM.
        // The tag: a clone carries its source's until now (clone_vm copies the config), and lookups go by it.
        try await client.updateVMConfig(node: vm.node, vmid: vm.vmid, set: [("protection", "1"), ("tags", vm.name)], delete: ["scsi0"])
        invalidate(vm.cluster)
        rememberName(vm.name, cluster: vm.cluster, node: vm.node, vmid: vm.vmid, tags: [vm.name])
        guard let settled = try await copyVM(vm) else {
            throw DomainError.inconsistent("the copy VM \(vm.vmid) for \(copy.csiName) vanished while it was being settled")
        }
        return settled
    }

    /// Records options for a volume in its options VM (created on first use).
    package func recordOptions(_ options: [String: String], volumeID: String, cluster: String, node: String) async throws {
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
    package func destroy(_ copy: CopyVM) async throws {
        var doomed = [copy.vm]
        for vm in try await vmsByCurrentNames(copy.vm.cluster) where vm.name == copy.vm.name && vm.vmid != copy.vm.vmid {
            if let twin = try await copyVM(vm), twin.kind == copy.kind, twin.csiName == copy.csiName { doomed.append(vm) }
        }
        for vm in doomed {
            do {
                // Protection (set when the copy settled) refuses destroy_vm until lifted.
                try await client(vm.cluster).updateVMConfigSync(node: vm.node, vmid: vm.vmid, delete: ["protection"])
                defer { forgetName(cluster: vm.cluster, vmid: vm.vmid) }
                try await client(vm.cluster).destroyVM(node: vm.node, vmid: vm.vmid, timeout: taskTimeout)
            } catch ProxmoxError.notFound {
                // Already gone.
            }
        }
        invalidate(copy.vm.cluster)
    }
}
