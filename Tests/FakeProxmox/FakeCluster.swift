import Foundation
import ProxmoxAPI
import ProxmoxDomain
import Synchronization

/// An in-memory Proxmox cluster behind the domain's `ProxmoxCluster` seam, for
/// unit tests that run in milliseconds. It keeps the rules the controller's
/// decisions depend on, in the simulator's model (simulator/pvesim/api.py,
/// which cites the qemu-server and pve-storage sub of each):
/// - a config change goes to pending first; a running VM hot-plugs disk
///   changes only when its `hotplug` has `disk`, a stopped VM applies all
///   (qemu-server API2/Qemu.pm update_vm, vmconfig_hotplug_pending / vmconfig_apply_pending);
/// - a change sent with a stale digest is refused (PVE::Tools assert_if_modified);
/// - a dropped drive whose volume the VM owns becomes `unusedN`
///   (vmconfig_register_unused_drive); deleting `unusedN` frees the volume;
/// - `protection=1` refuses removing a drive and destroying the VM (guest-common check_protection);
/// - `<storage>:0,import-from=<volid>` makes a copy owned by the VM (create_disks);
/// - a VM's name appears only when its create ends (create_vm writes it last);
/// - a call for a VM on a node that lacks it: "Configuration file … does not exist".
/// Faults (a refused call, a failing hot-plug, a slow import, a racing writer)
/// are injected per call, and every call is recorded for tests to count.
package final class FakeCluster: ProxmoxCluster {
    package struct Storage: Sendable {
        package var id: String
        package var type: String
        package var shared: Bool
        package var nodes: [String]
        /// Bytes each node's share of it holds (the pool's size for shared storage).
        package var capacity: Int64
    }

    package struct Volume: Sendable {
        package var volid: String
        package var storage: String
        /// Nil on shared storage.
        package var node: String?
        package var owner: Int
        package var size: Int64
        /// The image format on file storages (from the name's extension); nil on block storages.
        package var format: String? = nil
        /// Storage snapshots of the volume (PVE::Storage::volume_snapshot), by name.
        package var snapshots: Set<String> = []
    }

    /// A VM snapshot: the config it recorded (its drives name the volumes snapshotted).
    package struct VMSnapshotRecord: Sendable {
        package var description: String
        package var time: Int64
        package var values: [String: String]
    }

    package struct VM: Sendable {
        package var vmid: Int
        package var node: String
        /// Current values (what the running VM has).
        package var values: [String: String]
        package var pending: [String: String] = [:]
        package var pendingDelete: Set<String> = []
        package var running: Bool
        package var template = false
        package var changes = 0
        /// True between a create's start and its end: no name yet, `lock: create`.
        package var creating = false
        package var snapshots: [String: VMSnapshotRecord] = [:]

        var digest: String { "digest-\(vmid)-\(changes)" }
        var name: String? { creating ? nil : values["name"] }
    }

    /// A kind of call, for faults and counts.
    package enum Call: String, Sendable, Hashable {
        case resources, nextID, createVM, waitTask, vmList, config, pending, activeTasks, update, updateSync, resize,
             destroy, volumes, allocate, deleteVolume, snapshots, createSnapshot, deleteSnapshot, clone, migrate
    }

    /// A config write as Proxmox received it.
    package struct Write: Sendable, Equatable {
        package var vmid: Int
        package var set: [String: String]
        package var delete: [String]
        package var revert: [String]
    }

    package struct State: Sendable {
        package var nodes: [String]
        package var storages: [String: Storage] = [:]
        /// Keyed by "<node or empty>|<volid>".
        package var volumes: [String: Volume] = [:]
        package var vms: [Int: VM] = [:]
        package var calls: [Call] = []
        package var writes: [Write] = []
        package var faults: [Call: [ProxmoxError]] = [:]
        /// Runs before the next call of a kind (outside the lock): another writer racing the driver.
        package var before: [Call: [@Sendable (FakeCluster) -> Void]] = [:]
        /// VMs whose hot-plugs fail ("hotplug problem"): the change stays pending.
        package var failingHotplug: Set<Int> = []
        /// How long a GET …/config takes to answer (nil: at once), so concurrent readers overlap.
        package var configLatency: Duration?
        /// Imports that outlast the caller's wait: they run on until `finishImports`.
        package var slowImports = false
        package var runningImports: [(vmid: Int, key: String, value: String)] = []
        /// Creates that stay unfinished (no name, `lock: create`) until `finishCreates`.
        package var slowCreates = false
        /// Names cluster resources show instead of the config's (pvestatd's last round): nil value, none yet.
        package var resourceNames: [Int: String?] = [:]
        package var nextTask = 0
    }

    package let state: Mutex<State>

    package init(nodes: [String] = ["pve1", "pve2"]) {
        state = Mutex(State(nodes: nodes))
    }

    // MARK: - Setting the scene

    package func addStorage(_ id: String, type: String = "lvmthin", shared: Bool = false, nodes: [String]? = nil,
                            capacity: Int64 = 100 << 30) {
        state.withLock { $0.storages[id] = Storage(id: id, type: type, shared: shared, nodes: nodes ?? $0.nodes, capacity: capacity) }
    }

    @discardableResult
    package func addVM(_ vmid: Int, node: String = "pve1", name: String, running: Bool = true, template: Bool = false,
                       config: [String: String] = [:]) -> Int {
        state.withLock {
            var values = config
            values["name"] = name
            $0.vms[vmid] = VM(vmid: vmid, node: node, values: values, running: running, template: template)
        }
        return vmid
    }

    package func addVolume(_ volid: String, node: String?, owner: Int, size: Int64 = 1 << 30) {
        state.withLock {
            let storage = String(volid.split(separator: ":").first!)
            $0.volumes["\(node ?? "")|\(volid)"] = Volume(volid: volid, storage: storage, node: node, owner: owner, size: size)
        }
    }

    package func failNext(_ call: Call, with error: ProxmoxError, times: Int = 1) {
        state.withLock { $0.faults[call, default: []] += Array(repeating: error, count: times) }
    }

    package func beforeNext(_ call: Call, _ action: @escaping @Sendable (FakeCluster) -> Void) {
        state.withLock { $0.before[call, default: []].append(action) }
    }

    /// Another tool changes a VM's config (its digest moves).
    package func touch(_ vmid: Int, set key: String, to value: String) {
        state.withLock {
            $0.vms[vmid]?.values[key] = value
            $0.vms[vmid]?.changes += 1
        }
    }

    package func migrate(_ vmid: Int, to node: String) {
        state.withLock { $0.vms[vmid]?.node = node }
    }

    package func finishImports() {
        state.withLock { state in
            for (vmid, key, value) in state.runningImports { state.vms[vmid]?.values[key] = value; state.vms[vmid]?.changes += 1 }
            state.runningImports = []
        }
    }

    package func finishCreates() {
        state.withLock { state in
            for vmid in state.vms.keys where state.vms[vmid]!.creating { state.vms[vmid]!.creating = false }
        }
    }

    package func vm(_ vmid: Int) -> VM? { state.withLock { $0.vms[vmid] } }
    package func vms(named name: String) -> [VM] { state.withLock { $0.vms.values.filter { $0.values["name"] == name } } }
    package func volume(_ volid: String) -> Volume? { state.withLock { $0.volumes.values.first { $0.volid == volid } } }
    package var volumeCount: Int { state.withLock { $0.volumes.count } }
    package var writes: [Write] { state.withLock { $0.writes } }
    package func count(_ call: Call) -> Int { state.withLock { $0.calls.filter { $0 == call }.count } }

    // MARK: - ProxmoxCluster

    package func clusterResources(type: ResourceType?) async throws -> [ClusterResource] {
        try enter(.resources)
        return state.withLock { state in
            var out: [ClusterResource] = state.nodes.map { ClusterResource(id: "node/\($0)", type: "node", node: $0) }
            for storage in state.storages.values.sorted(by: { $0.id < $1.id }) {
                for node in storage.nodes {
                    let used = state.volumes.values.filter { $0.storage == storage.id && (storage.shared || $0.node == node) }
                        .reduce(Int64(0)) { $0 + $1.size }
                    out.append(ClusterResource(id: "storage/\(node)/\(storage.id)", type: "storage", node: node, storage: storage.id,
                                               pluginType: storage.type, shared: storage.shared, content: ["images", "rootdir"],
                                               disk: used, maxDisk: storage.capacity))
                }
            }
            for vm in state.vms.values.sorted(by: { $0.vmid < $1.vmid }) {
                // The name from pvestatd's round, lock and tags from the config now (pve-manager API2/Cluster.pm resources).
                let name = state.resourceNames[vm.vmid] ?? vm.name
                out.append(ClusterResource(id: "qemu/\(vm.vmid)", type: "qemu", node: vm.node, vmid: vm.vmid, name: name,
                                           status: vm.running ? "running" : "stopped", lock: vm.creating ? "create" : nil,
                                           template: vm.template,
                                           tags: vm.creating ? [] : ClusterResource.tagList(vm.values["tags"] ?? "")))
            }
            return out
        }
    }

    package func nextVMID() async throws -> Int {
        try enter(.nextID)
        return state.withLock { state in (100...).first { state.vms[$0] == nil }! }
    }

    package func startCreateVM(node: String, vmid: Int, settings: [(String, String)]) async throws -> String? {
        try enter(.createVM)
        return try state.withLock { state in
            if let other = state.vms[vmid] {
                throw ProxmoxError.server(status: 500, message: "unable to create VM \(vmid) - VM \(vmid) already exists on node '\(other.node)'")
            }
            var vm = VM(vmid: vmid, node: node, values: Dictionary(settings, uniquingKeysWith: { $1 }), running: false)
            vm.creating = state.slowCreates
            state.vms[vmid] = vm
            state.nextTask += 1
            return "UPID:\(node):\(state.nextTask):qmcreate:\(vmid):root@pam:"
        }
    }

    package func waitForTask(_ upid: String, timeout: Double, maxPollInterval: Double) async throws -> String {
        try enter(.waitTask)
        return "OK"
    }

    package func vmList(node: String) async throws -> [(vmid: Int, name: String?)] {
        try enter(.vmList)
        return state.withLock { $0.vms.values.filter { $0.node == node }.sorted { $0.vmid < $1.vmid }.map { ($0.vmid, $0.name) } }
    }

    package func vmConfig(node: String, vmid: Int) async throws -> VMConfig {
        try enter(.config)
        if let latency = state.withLock({ $0.configLatency }) { try await Task.sleep(for: latency) }
        return try state.withLock { state in
            let vm = try Self.vm(vmid, on: node, in: state)
            // GET …/config answers the pending values applied.
            var values = vm.values.merging(vm.pending) { $1 }
            for key in vm.pendingDelete { values[key] = nil }
            if vm.creating { values["lock"] = "create"; values["name"] = nil }
            return VMConfig(values: values, digest: vm.digest)
        }
    }

    package func vmConfigWithPending(node: String, vmid: Int) async throws -> VMConfig {
        try enter(.pending)
        return try state.withLock { state in
            let vm = try Self.vm(vmid, on: node, in: state)
            return VMConfig(values: vm.values, digest: vm.digest, pending: vm.pending, pendingDelete: vm.pendingDelete)
        }
    }

    package func activeTasks(node: String, vmid: Int) async throws -> [String] {
        try enter(.activeTasks)
        return state.withLock { state in
            state.runningImports.contains { $0.vmid == vmid } ? ["UPID:\(node):0:qmconfig:\(vmid):root@pam:"] : []
        }
    }

    package func updateVMConfig(node: String, vmid: Int, set: [(String, String)], delete: [String], revert: [String],
                                digest: String?, timeout: Double) async throws {
        try enter(.update)
        try state.withLock { try Self.update(&$0, node: node, vmid: vmid, set: set, delete: delete, revert: revert, digest: digest) }
    }

    package func updateVMConfigSync(node: String, vmid: Int, set: [(String, String)], delete: [String], digest: String?) async throws {
        try enter(.updateSync)
        try state.withLock { try Self.update(&$0, node: node, vmid: vmid, set: set, delete: delete, revert: [], digest: digest) }
    }

    package func resize(node: String, vmid: Int, disk: String, size: String, digest: String?) async throws {
        try enter(.resize)
        try state.withLock { state in
            let vm = try Self.vm(vmid, on: node, in: state)
            guard let value = vm.values[disk], let key = Self.volumeKey(Self.volid(of: value), node: node, in: state) else {
                throw ProxmoxError.server(status: 500, message: "disk '\(disk)' does not exist")
            }
            let bytes = Int64(size.dropLast())! << 20
            guard bytes >= state.volumes[key]!.size else { throw ProxmoxError.server(status: 500, message: "shrinking disks is not supported") }
            state.volumes[key]!.size = bytes
        }
    }

    package func destroyVM(node: String, vmid: Int, timeout: Double) async throws {
        try enter(.destroy)
        try state.withLock { state in
            let vm = try Self.vm(vmid, on: node, in: state)
            if vm.values["protection"] == "1" { throw ProxmoxError.server(status: 500, message: "can't remove VM \(vmid) - protection mode enabled") }
            if vm.running { throw ProxmoxError.server(status: 500, message: "VM \(vmid) is running - destroy failed") }
            // destroy_vm frees the volumes the VM owns.
            state.volumes = state.volumes.filter { $0.value.owner != vmid }
            state.vms[vmid] = nil
        }
    }

    package func snapshots(node: String, vmid: Int) async throws -> [VMSnapshot] {
        try enter(.snapshots)
        return try state.withLock { state in
            try Self.vm(vmid, on: node, in: state).snapshots.sorted { $0.key < $1.key }
                .map { VMSnapshot(name: $0.key, description: $0.value.description, time: $0.value.time) }
        }
    }

    /// snapshot_create: every drive's storage must snapshot (lvmthin, zfspool, rbd, qcow2 files), then each is taken.
    package func createSnapshot(node: String, vmid: Int, name: String, description: String) async throws {
        try enter(.createSnapshot)
        try state.withLock { state in
            var vm = try Self.vm(vmid, on: node, in: state)
            guard vm.snapshots[name] == nil else { throw ProxmoxError.server(status: 500, message: "snapshot name '\(name)' already used") }
            let keys = try vm.values.filter { Self.isDisk($0.key) }.map { drive -> String in
                guard let key = Self.volumeKey(Self.volid(of: drive.value), node: node, in: state), let volume = state.volumes[key],
                      Self.snapshots(volume, in: state) else {
                    throw ProxmoxError.server(status: 500, message: "snapshot feature is not available")
                }
                return key
            }
            for key in keys { state.volumes[key]!.snapshots.insert(name) }
            vm.snapshots[name] = VMSnapshotRecord(description: description, time: Int64(Date().timeIntervalSince1970), values: vm.values)
            state.vms[vmid] = vm
        }
    }

    package func deleteSnapshot(node: String, vmid: Int, name: String) async throws {
        try enter(.deleteSnapshot)
        try state.withLock { state in
            var vm = try Self.vm(vmid, on: node, in: state)
            guard let record = vm.snapshots.removeValue(forKey: name) else {
                throw ProxmoxError.server(status: 500, message: "snapshot '\(name)' does not exist")
            }
            for (key, value) in record.values where Self.isDisk(key) {
                if let volumeKey = Self.volumeKey(Self.volid(of: value), node: node, in: state) { state.volumes[volumeKey]!.snapshots.remove(name) }
            }
            state.vms[vmid] = vm
        }
    }

    /// clone_vm, full: each drive of the (snapshot's) config copied, owned by the new VM; zfspool cannot copy from a snapshot.
    package func startClone(node: String, vmid: Int, newID: Int, name: String, description: String,
                            snapshot: String?, storage: String?) async throws -> String? {
        try enter(.clone)
        return try state.withLock { state in
            let vm = try Self.vm(vmid, on: node, in: state)
            if state.vms[newID] != nil { throw ProxmoxError.server(status: 500, message: "unable to create VM \(newID): config file already exists") }
            let source: [String: String]
            if let snapshot {
                guard let record = vm.snapshots[snapshot] else { throw ProxmoxError.server(status: 500, message: "snapshot '\(snapshot)' does not exist") }
                source = record.values
            } else {
                source = vm.values
            }
            var values: [String: String] = ["name": name, "description": description]
            // clone_vm copies every other option, tags too (qemu-server API2/Qemu.pm clone_vm: "copy everything else").
            if let tags = source["tags"] { values["tags"] = tags }
            for (key, value) in source.sorted(by: { $0.key < $1.key }) where Self.isDisk(key) {
                let volid = Self.volid(of: value)
                guard let sourceKey = Self.volumeKey(volid, node: node, in: state), let original = state.volumes[sourceKey] else {
                    throw ProxmoxError.server(status: 500, message: "volume '\(volid)' does not exist")
                }
                if snapshot != nil, state.storages[original.storage]?.type == "zfspool" {
                    throw ProxmoxError.server(status: 500, message: "Full clone feature is not supported for a snapshot of '\(volid)' (\(key))")
                }
                let target = storage ?? original.storage
                let shared = state.storages[target]?.shared ?? false
                let index = (0...).first { n in !state.volumes.values.contains { $0.volid.hasSuffix("vm-\(newID)-disk-\(n)") } }!
                let copy = "\(target):vm-\(newID)-disk-\(index)"
                state.volumes["\(shared ? "" : node)|\(copy)"] = Volume(volid: copy, storage: target, node: shared ? nil : node,
                                                                       owner: newID, size: original.size)
                values[key] = copy
            }
            state.vms[newID] = VM(vmid: newID, node: node, values: values, running: false)
            state.nextTask += 1
            return "UPID:\(node):\(state.nextTask):qmclone:\(vmid):root@pam:"
        }
    }

    /// An offline migration, done at once (QemuMigrate: the VM's own local volumes move with
    /// it, a name taken on the target gets the next free one; another VM's volume refuses it).
    package func startMigrate(node: String, vmid: Int, target: String) async throws -> String? {
        try enter(.migrate)
        return try state.withLock { state in
            var vm = try Self.vm(vmid, on: node, in: state)
            guard !vm.running else { throw ProxmoxError.server(status: 500, message: "can't migrate running VM without --online") }
            for (key, value) in vm.values.sorted(by: { $0.key < $1.key }) where Self.isDisk(key) || key.hasPrefix("unused") {
                let volid = Self.volid(of: value)
                guard let sourceKey = Self.volumeKey(volid, node: node, in: state), var volume = state.volumes[sourceKey],
                      volume.node != nil else { continue }
                guard volume.owner == vmid else {
                    throw ProxmoxError.taskFailed(upid: "migrate", exitStatus: "can't migrate VM - check log "
                        + "(can't migrate local disk '\(volid)': owned by other VM (owner = VM \(volume.owner)))")
                }
                var moved = volid
                while state.volumes["\(target)|\(moved)"] != nil {
                    let index = (0...).first { n in state.volumes["\(target)|\(volume.storage):vm-\(vmid)-disk-\(n)"] == nil }!
                    moved = "\(volume.storage):vm-\(vmid)-disk-\(index)"
                }
                state.volumes[sourceKey] = nil
                volume.node = target
                volume.volid = moved
                state.volumes["\(target)|\(moved)"] = volume
                vm.values[key] = moved + value.dropFirst(volid.count)
            }
            vm.node = target
            state.vms[vmid] = vm
            state.nextTask += 1
            return "UPID:\(node):\(state.nextTask):qmigrate:\(vmid):root@pam:"
        }
    }

    package func volumes(node: String, storage: String, vmid: Int?) async throws -> [StorageVolume] {
        try enter(.volumes)
        return try state.withLock { state in
            guard let found = state.storages[storage], found.nodes.contains(node) else {
                throw ProxmoxError.server(status: 500, message: "storage '\(storage)' does not exist")
            }
            return state.volumes.values
                .filter { $0.storage == storage && (found.shared || $0.node == node) && (vmid == nil || $0.owner == vmid) }
                .sorted { $0.volid < $1.volid }
                .map { StorageVolume(volid: $0.volid, size: $0.size, vmid: $0.owner) }
        }
    }

    package func allocateVolume(node: String, storage: String, vmid: Int, name: String, size: String, format: String?) async throws -> String {
        try enter(.allocate)
        return try state.withLock { state in
            guard let found = state.storages[storage], found.nodes.contains(node) else {
                throw ProxmoxError.server(status: 500, message: "storage '\(storage)' does not exist")
            }
            let isFile = Self.isFileStorage(found.type)
            let volid = isFile ? "\(storage):\(vmid)/\(name)" : "\(storage):\(name)"
            // pve-storage Plugin.pm alloc_image: a file's extension is its format, and must be the one asked.
            let fileFormat = isFile ? name.split(separator: ".").last.map(String.init) : nil
            if isFile, let format, format != fileFormat {
                throw ProxmoxError.server(status: 500, message: "illegal name '\(name)' - wrong extension for format ('\(fileFormat ?? "") != '\(format)')")
            }
            let key = "\(found.shared ? "" : node)|\(volid)"
            guard state.volumes[key] == nil else { throw ProxmoxError.server(status: 500, message: "volume '\(volid)' already exists") }
            state.volumes[key] = Volume(volid: volid, storage: storage, node: found.shared ? nil : node, owner: vmid,
                                        size: Int64(size.dropLast())! << 20, format: fileFormat)
            return volid
        }
    }

    package func deleteVolume(node: String, storage: String, volid: String) async throws {
        try enter(.deleteVolume)
        try state.withLock { state in
            guard let key = Self.volumeKey(volid, node: node, in: state) else {
                throw ProxmoxError.notFound("volume \(volid) does not exist")
            }
            state.volumes[key] = nil
        }
    }

    // MARK: - Rules

    /// Records the call, runs what waits for it, and throws its injected fault if one is queued.
    private func enter(_ call: Call) throws {
        let actions = state.withLock { state in
            state.calls.append(call)
            defer { state.before[call] = nil }
            return state.before[call] ?? []
        }
        for action in actions { action(self) }
        let fault = state.withLock { state -> ProxmoxError? in
            guard var queue = state.faults[call], !queue.isEmpty else { return nil }
            let first = queue.removeFirst()
            state.faults[call] = queue
            return first
        }
        if let fault { throw fault }
    }

    private static func vm(_ vmid: Int, on node: String, in state: State) throws -> VM {
        guard let vm = state.vms[vmid], vm.node == node else {
            throw ProxmoxError.notFound("Configuration file 'nodes/\(node)/qemu-server/\(vmid).conf' does not exist")
        }
        return vm
    }

    static func isFileStorage(_ type: String) -> Bool { ["dir", "nfs", "cifs", "glusterfs"].contains(type) }
    /// pve-storage volume_has_feature 'snapshot': lvmthin, zfspool, rbd, and qcow2 files.
    static func snapshots(_ volume: Volume, in state: State) -> Bool {
        switch state.storages[volume.storage]?.type {
        case "lvmthin", "zfspool", "rbd": true
        default: volume.format == "qcow2"
        }
    }
    static func volid(of value: String) -> String { String(value.split(separator: ",").first ?? "") }
    static func isDisk(_ key: String) -> Bool { key.range(of: #"^(scsi|virtio|sata|ide)\d+$"#, options: .regularExpression) != nil }
    static func isUnused(_ key: String) -> Bool { key.hasPrefix("unused") }

    private static func volumeKey(_ volid: String, node: String, in state: State) -> String? {
        [ "\(node)|\(volid)", "|\(volid)"].first { state.volumes[$0] != nil }
    }

    /// update_vm: pending first, then hot-plug (running) or apply (stopped).
    private static func update(_ state: inout State, node: String, vmid: Int, set: [(String, String)], delete: [String],
                               revert: [String], digest: String?) throws {
        var vm = try Self.vm(vmid, on: node, in: state)
        if let digest, digest != vm.digest {
            throw ProxmoxError.digestConflict("checksum mismatch (file change by other user?)")
        }
        // PVE::JSONSchema parse_property_string, as the 400 of the config API: a drive line names each option once.
        for (key, value) in set where isDisk(key) {
            let names = value.split(separator: ",").dropFirst().map { $0.split(separator: "=").first.map(String.init) ?? "" }
            if let twice = names.first(where: { name in names.filter { $0 == name }.count > 1 }) {
                throw ProxmoxError.invalidParameters([key: "invalid format - duplicate key in comma-separated list property: \(twice)"])
            }
        }
        // create_disks (qemu-server API2/Qemu.pm) sizes every drive it is given anew and
        // dies "volume … does not exist" before anything is written.
        // (`storage:N` is an allocation of N GiB, not a volume.)
        for (key, value) in set where isDisk(key) && !isUnused(key) && (vm.values[key] ?? vm.pending[key]) != value
            && Double(volid(of: value).split(separator: ":").last ?? "") == nil {
            guard volumeKey(volid(of: value), node: vm.node, in: state) != nil else {
                throw ProxmoxError.server(status: 500, message: "failed to update VM \(vmid): volume \(volid(of: value)) does not exist")
            }
        }
        state.writes.append(Write(vmid: vmid, set: Dictionary(set, uniquingKeysWith: { $1 }), delete: delete, revert: revert))
        let protected = vm.values["protection"] == "1"
        for key in revert {
            if isDisk(key), let value = vm.pending[key] { registerUnused(&vm, value, state: state) }
            vm.pending[key] = nil
            vm.pendingDelete.remove(key)
        }
        var modified = Set<String>()
        for key in delete {
            modified.insert(key)
            guard let value = vm.values[key] ?? vm.pending[key] else { continue }
            let pendingValue = vm.pending.removeValue(forKey: key)
            if isUnused(key) {
                if protected { throw ProxmoxError.server(status: 500, message: "can't remove unused disk '\(volid(of: value))' - protection mode enabled") }
                if let volumeKey = volumeKey(volid(of: value), node: vm.node, in: state) { state.volumes[volumeKey] = nil }
                vm.values[key] = nil
                continue
            }
            if isDisk(key) {
                if protected { throw ProxmoxError.server(status: 500, message: "can't remove drive '\(key)' - protection mode enabled") }
                if let pendingValue { registerUnused(&vm, pendingValue, state: state) }
            }
            vm.pendingDelete.insert(key)
        }
        for (key, value) in set {
            modified.insert(key)
            var value = value
            if isDisk(key), value.contains("import-from=") {
                // create_disks: the copy is made now, owned by the VM, before the change is pending.
                let parts = value.split(separator: ",").map(String.init)
                let storage = String(parts[0].split(separator: ":")[0])
                let source = parts.first { $0.hasPrefix("import-from=") }.map { String($0.dropFirst("import-from=".count)) } ?? ""
                guard let sourceKey = volumeKey(source, node: vm.node, in: state) else {
                    throw ProxmoxError.server(status: 500, message: "import-from: volume '\(source)' does not exist")
                }
                let index = (0...).first { n in !state.volumes.values.contains { $0.volid.hasSuffix("vm-\(vmid)-disk-\(n)") } }!
                let shared = state.storages[storage]?.shared ?? false
                let newVolid = "\(storage):vm-\(vmid)-disk-\(index)"
                state.volumes["\(shared ? "" : vm.node)|\(newVolid)"] = Volume(volid: newVolid, storage: storage,
                                                                              node: shared ? nil : vm.node, owner: vmid,
                                                                              size: state.volumes[sourceKey]!.size)
                value = newVolid
                if state.slowImports {
                    state.runningImports.append((vmid, key, value))
                    state.vms[vmid] = vm
                    throw ProxmoxError.taskTimedOut(upid: "UPID:\(node):0:qmconfig:\(vmid):root@pam:")
                }
            }
            if vm.pending[key] == value { continue }
            vm.pending[key] = value
            vm.pendingDelete.remove(key)
        }
        // cleanup_pending: values equal to the current ones, deletes of keys not there.
        for (key, value) in vm.pending where vm.values[key] == value { vm.pending[key] = nil }
        vm.pendingDelete = vm.pendingDelete.filter { vm.values[$0] != nil }
        var problems: [String] = []
        let canPlug = vm.running ? (VMConfig(values: vm.values, digest: "").hotplugWithoutDisk == nil) : true
        for key in vm.pendingDelete.sorted() where !vm.running || modified.contains(key) {
            if isDisk(key) && vm.running {
                guard canPlug else { continue }
                if state.failingHotplug.contains(vmid) { problems.append("\(key): hotplug problem - unplug failed"); continue }
            }
            if let value = vm.values.removeValue(forKey: key), isDisk(key) { registerUnused(&vm, value, state: state) }
            vm.pendingDelete.remove(key)
        }
        for key in vm.pending.keys.sorted() where !vm.running || modified.contains(key) {
            if isDisk(key) && vm.running {
                guard canPlug else { continue }
                if state.failingHotplug.contains(vmid) { problems.append("\(key): hotplug problem - plug failed"); continue }
            }
            vm.values[key] = vm.pending.removeValue(forKey: key)
            if isDisk(key) {
                // A volume made a drive again is no longer unused.
                let volid = volid(of: vm.values[key]!)
                for (unused, held) in vm.values where isUnused(unused) && held == volid { vm.values[unused] = nil }
            }
        }
        vm.changes += 1
        state.vms[vmid] = vm
        if !problems.isEmpty {
            throw ProxmoxError.taskFailed(upid: "UPID:\(node):0:qmconfig:\(vmid):root@pam:",
                                          exitStatus: "400 Parameter verification failed. " + problems.joined(separator: " "))
        }
    }

    /// vmconfig_register_unused_drive: a dropped drive of a volume the VM owns becomes unusedN.
    private static func registerUnused(_ vm: inout VM, _ value: String, state: State) {
        let volid = volid(of: value)
        guard state.volumes.values.contains(where: { $0.volid == volid && $0.owner == vm.vmid }),
              !vm.values.contains(where: { isDisk($0.key) && Self.volid(of: $0.value) == volid }) else { return }
        let key = (0...).lazy.map { "unused\($0)" }.first { vm.values[$0] == nil }!
        vm.values[key] = volid
    }
}
