import FoundationEssentials
import ProxmoxAPI
import Synchronization
import TextSupport

/// A VM as the controller needs it.
public struct VMRef: Sendable, Hashable {
    public var cluster: String
    public var node: String
    public var vmid: Int
    public var name: String
    public var isTemplate = false
    /// The config's `lock` (`create` while a create task runs: the VM has no name yet).
    public var lock: String?

    /// The VM across clusters, for the driver's per-VM locks and caches.
    package var key: String { "\(cluster)/\(vmid)" }
}

/// Where a storage exists and what kind it is, from cluster resources.
public struct StorageRef: Sendable {
    public var id: String
    public var type: String
    public var shared: Bool
    /// Nodes where it is available, with free bytes on each.
    public var available: [String: Int64]
    /// For shared storage: whether its `nodes` list (storage.cfg) leaves out some of the cluster's nodes.
    public var limitedToSomeNodes = false
}

/// The driver's view of Proxmox volumes: the operations the CSI controller
/// needs, on top of the typed API client. Everything it knows it reads from
/// Proxmox (volume names, VM configs); it keeps only short-lived caches.
public final class ProxmoxVolumes: Sendable {
    /// The clusters in the config's order (lookups try them in turn), and a client for each.
    package let clusterNames: [String]
    let clients: [String: any ProxmoxCluster]
    /// The vmid that owns the driver's volumes (`vm-<ownerVMID>-…`).
    package let ownerVMID: Int
    /// How long a VM destroy may take.
    let taskTimeout: Double
    package let vmLocks = KeyedSerializer<String>()
    /// Attachments and detachments of one VM, merged into as few writes as possible.
    private let configBatches = ConfigBatches()
    /// Operations on one volume run one at a time, so two of them never
    /// decide from the same view of where it is attached.
    package let volumeLocks = KeyedSerializer<String>()
    private let resourceReads = CoalescedReads<String, [ClusterResource]>()
    /// Concurrent scans share their reads of a VM's config.
    package let configReads = CoalescedReads<String, VMConfig>()
    /// VM configs as scans last read them. The driver's own changes drop a
    /// VM's entry and count; a scan whose read overlapped a change (the count
    /// moved meanwhile) does not cache what it read, which may predate it.
    private let scanned = Mutex<(configs: [String: (at: Double, config: VMConfig)], changes: [String: UInt64])>(([:], [:]))
    private let cache = Mutex<[String: (at: Double, resources: [ClusterResource])]>([:])
    /// How often each cluster's cache was dropped: a read that overlapped a drop is not cached.
    private let cacheGenerations = Mutex<[String: UInt64]>([:])
    /// Native snapshot lists of source VMs as CreateSnapshot's name check last read them,
    /// by "cluster/vmid/name"; the driver's own snapshot changes drop an entry and count.
    let snapshotScans = Mutex<(lists: [String: (at: Double, snapshots: [NativeSnapshot])], changes: [String: UInt64])>(([:], [:]))
    /// Clusters whose driver VMs all carry their name as a tag (`vmsAsConfigured`).
    let taggedClusters = Mutex<Set<String>>([])
    /// Names read from the configs of VMs whose tag is not their resources name (or given
    /// by this process to VMs it made), by VM key, with the node, lock and tags they were
    /// read under and when (`vmsByCurrentNames`).
    let namesRead = Mutex<[String: (signature: String, name: String, at: Double)]>([:])
    /// How long such a name counts. pvestatd names a VM in cluster resources within about
    /// 10 s; a name kept for good could outlive its vmid (another controller replica
    /// destroys the VM and makes another under that vmid, with the same node and tags).
    static let nameKeptSeconds = 60.0
    /// Those name reads in flight, by VM key, incarnation and signature.
    let nameReads = CoalescedReads<String, VMConfig>()
    /// Per VM key, how often this process made or destroyed a VM with that vmid: a
    /// reused vmid (a restore's clone made again after a failed try carries the same
    /// node, lock and tags) must not get the name read of the VM that had it before.
    let vmidIncarnations = Mutex<[String: UInt64]>([:])

    /// The driver made or destroyed a VM under this vmid: what was read of its name is forgotten.
    package func forgetName(cluster: String, vmid: Int) {
        let key = "\(cluster)/\(vmid)"
        vmidIncarnations.withLock { $0[key, default: 0] &+= 1 }
        namesRead.withLock { _ = $0.removeValue(forKey: key) }
    }
    /// VMs this process is creating ("cluster/vmid"): an unnamed VM in `lock: create` is ours only if listed here.
    package let creating = Mutex<Set<String>>([])
    /// Cluster resources are reread after this many seconds.
    package let cacheSeconds: Double
    /// A scan (who else holds this volume?) trusts a VM config read this recently.
    /// Every change the driver makes drops the VM's entry and the read that confirms
    /// the change puts the new config back, so within this time a scan misses only
    /// what someone else did to a VM; a holder a scan reports is read again before
    /// anything is decided on it.
    package let scanSeconds: Double

    package init(clusters: [(name: String, client: any ProxmoxCluster)], ownerVMID: Int, taskTimeout: Double,
                 cacheSeconds: Double = 2, scanSeconds: Double = 30) {
        clusterNames = clusters.map(\.name)
        clients = Dictionary(clusters.map { ($0.name, $0.client) }, uniquingKeysWith: { first, _ in first })
        self.ownerVMID = ownerVMID
        self.taskTimeout = taskTimeout
        self.cacheSeconds = cacheSeconds
        self.scanSeconds = scanSeconds
    }

    package func client(_ cluster: String) throws(DomainError) -> any ProxmoxCluster {
        guard let client = clients[cluster] else {
            throw DomainError.notFound("cluster \"\(cluster)\" is not in the driver's config")
        }
        return client
    }

    // MARK: - Cluster resources (cached briefly)

    package func resources(_ cluster: String, fresh: Bool = false) async throws -> [ClusterResource] {
        let now = ProcessInfo.processInfo.systemUptime
        if !fresh, let cached = cache.withLock({ $0[cluster] }), now - cached.at < cacheSeconds {
            return cached.resources
        }
        // Callers that miss together share one request (one started after they asked when fresh is wanted).
        let client = try client(cluster)
        let asked = fresh ? ContinuousClock.now : nil
        let generation = cacheGenerations.withLock { $0[cluster] ?? 0 }
        let resources = try await resourceReads.read(cluster, asked: asked) { try await client.clusterResources() }
        // Not kept when the driver changed the cluster meanwhile: the read may predate the change.
        if cacheGenerations.withLock({ $0[cluster] ?? 0 }) == generation {
            cache.withLock { $0[cluster] = (now, resources) }
        }
        return resources
    }

    package func invalidate(_ cluster: String) {
        cacheGenerations.withLock { $0[cluster, default: 0] &+= 1 }
        cache.withLock { _ = $0.removeValue(forKey: cluster) }
    }

    package func storage(_ cluster: String, _ id: String) async throws -> StorageRef? {
        let resources = try await resources(cluster)
        let entries = resources.filter { $0.type == "storage" && $0.storage == id }
        guard let first = entries.first else { return nil }
        var storage = StorageRef(id: id, type: first.pluginType ?? "", shared: first.shared,
                                 available: Dictionary(entries.map { ($0.node, $0.maxDisk - $0.disk) }, uniquingKeysWith: max))
        // Cluster resources list a storage only on the nodes its `nodes` option names, all when unset
        // (pve-manager PVE/API2/Cluster.pm resources: `next if !PVE::Storage::storage_check_enabled(...)` per node).
        let clusterNodes = Set(resources.filter { $0.type == "node" }.map(\.node))
        storage.limitedToSomeNodes = storage.shared && !clusterNodes.isSubset(of: Set(storage.available.keys))
        return storage
    }

    package func vms(_ cluster: String) async throws -> [VMRef] {
        try await resources(cluster).compactMap { resource in
            guard resource.type == "qemu", let vmid = resource.vmid else { return nil }
            return VMRef(cluster: cluster, node: resource.node, vmid: vmid, name: resource.name ?? "", isTemplate: resource.template, lock: resource.lock)
        }
    }

    /// A Kubernetes node id as a VM: the VM's name (= node name), its vmid,
    /// or either prefixed with the cluster (`cluster/name`, `cluster/vmid`).
    package func vm(forNodeID nodeID: String) async throws -> VMRef? {
        let parts = nodeID.split(separator: "/", maxSplits: 1).map(String.init)
        let (clusterFilter, key) = parts.count == 2 ? (Optional(parts[0]), parts[1]) : (nil, nodeID)
        // A miss in the cached listing is asked again: a VM that just appeared
        // or moved must not count as missing (a VM reported missing is gone
        // only if a fresh listing agrees).
        for fresh in [false, true] {
            for cluster in clusterNames where clusterFilter == nil || clusterFilter == cluster {
                let vms = try await vms(cluster, fresh: fresh).filter { !$0.isTemplate }
                let named = vms.filter { $0.name == key }
                if named.count > 1 {
                    throw DomainError.conflict("node id \(nodeID) matches \(named.count) VMs named \"\(key)\" in cluster \(cluster) "
                        + "(vmids \(named.map { String($0.vmid) }.joined(separator: ", "))): rename all but the node's VM")
                }
                if let match = named.first ?? Int(key).flatMap({ id in vms.first { $0.vmid == id } }) {
                    return match
                }
            }
        }
        return nil
    }

    // MARK: - Volumes

    /// The volume a CSI id names and its storage, whether or not the volume
    /// still exists; nil for ids this driver cannot have made. A volume owned
    /// by any VM other than the driver's own record VMs — a VM's own disk — is
    /// never the driver's, whatever id names it.
    package func locate(_ volumeID: String) async throws -> (handle: VolumeHandle, storage: StorageRef)? {
        guard let handle = try? VolumeHandle(parsing: volumeID),
              clusterNames.contains(handle.cluster),
              let storage = try await storage(handle.cluster, handle.storage) else { return nil }
        if let owner = handle.ownerVMID, owner != ownerVMID {
            // By current names: resources name a VM only after pvestatd's next round.
            let records = try await vmsByCurrentNames(handle.cluster, fresh: false).filter { $0.name.hasPrefix(CopyVM.Kind.volume.rawValue) }
            guard records.contains(where: { $0.vmid == owner }) else { return nil }
        }
        return (handle, storage)
    }

    /// The volume a CSI id names, if it exists, with its storage and size.
    package func existing(_ volumeID: String) async throws -> (handle: VolumeHandle, storage: StorageRef, size: Int64)? {
        guard let (handle, storage) = try await locate(volumeID),
              let size = try await size(of: handle, storage: storage) else { return nil }
        return (handle, storage, size)
    }

    /// The volume's size if it exists (on its node, or the shared storage).
    package func size(of handle: VolumeHandle, storage: StorageRef) async throws -> Int64? {
        let node = storage.node(for: handle)
        guard storage.available[node] != nil else { return nil }
        let volid = handle.volid(ownerVMID: ownerVMID, storageType: storage.type)
        return try await client(handle.cluster).volumes(node: node, storage: storage.id, vmid: handle.ownerVMID ?? ownerVMID)
            .first { $0.volid == volid }?.size
    }

    /// A VM's config as it is now, current values and pending changes (a read
    /// that started after this call, shared with concurrent callers).
    package func freshConfig(_ vm: VMRef) async throws -> VMConfig {
        let client = try client(vm.cluster)
        let key = vm.key
        let now = ProcessInfo.processInfo.systemUptime
        let changes = scanChanges(vm)
        // Keyed by node too: a read another caller sent to the node a VM left must not answer for it.
        let config = try await configReads.read("\(key)@\(vm.node)", asked: ContinuousClock.now) {
            try await client.vmConfigWithPending(node: vm.node, vmid: vm.vmid)
        }
        // Scans may use it (a confirm read after the driver's own change keeps them from rereading).
        configRead(vm, config, at: now, changesBefore: changes)
        return config
    }

    /// A config read (not one a write left: that has no digest) at most `seconds`
    /// old, and so later than the driver's last change to the VM; nil when none.
    package func lastRead(_ vm: VMRef, within seconds: Double) -> VMConfig? {
        let now = ProcessInfo.processInfo.systemUptime
        guard let cached = scanned.withLock({ $0.configs[vm.key] }), !cached.config.digest.isEmpty,
              now - cached.at < seconds else { return nil }
        return cached.config
    }

    /// How often the driver changed the VM's config: taken before a read, it tells
    /// `configRead` whether the read may predate one of those changes.
    package func scanChanges(_ vm: VMRef) -> UInt64 {
        scanned.withLock { $0.changes[vm.key] ?? 0 }
    }

    /// Keeps a config just read (started at `at`) for scans, unless a change of the
    /// driver's overlapped the read, which may then predate it. Every read of a VM's
    /// config comes here, so what another tool changed is seen from the next read on.
    package func configRead(_ vm: VMRef, _ config: VMConfig, at: Double, changesBefore: UInt64) {
        scanned.withLock {
            if $0.changes[vm.key] ?? 0 == changesBefore { $0.configs[vm.key] = (at, config) }
        }
    }

    /// Runs a change of a VM's config while no other change of that VM runs
    /// (Proxmox would answer with lock timeouts), then forgets the scanned config.
    package func changingVM<T: Sendable>(_ vm: VMRef, _ body: @Sendable () async throws -> T) async throws -> T {
        let key = vm.key
        defer { configChanged(vm) }
        return try await vmLocks.run(key, body)
    }

    /// Forgets what scans read of the VM's config: the driver just changed it.
    package func configChanged(_ vm: VMRef) { configWritten(vm, nil) }

    /// A change of the driver's own whose result is known (`config`, nil when
    /// it is not): scans use it as they would a read right after the change.
    package func configWritten(_ vm: VMRef, _ config: VMConfig?) {
        let key = vm.key
        let now = ProcessInfo.processInfo.systemUptime
        scanned.withLock {
            $0.configs[key] = config.map { (now, $0) }
            $0.changes[key, default: 0] &+= 1
        }
    }

    /// Changes a VM's config with `edit`, in one write with the edits other
    /// callers make to that VM meanwhile; returns the VM as written to (a VM
    /// that migrated is followed to its node; notFound means it is on none)
    /// and, when certain, its config as the write left it.
    @discardableResult
    package func editConfig(_ vm: VMRef, _ edit: @escaping ConfigEdit) async throws -> ConfigOutcome {
        try await configBatches.apply(vm, in: self, edit)
    }

    /// The VM's config as it is now, read on the node that has it: one that
    /// migrated is looked up afresh. Nil only when no node has the VM.
    package func currentConfig(_ vm: VMRef) async throws -> (VMRef, VMConfig)? {
        var target = vm
        for _ in 0..<3 {
            do {
                return (target, try await freshConfig(target))
            } catch ProxmoxError.notFound {
                guard let found = try await vms(vm.cluster, fresh: true).first(where: { $0.vmid == vm.vmid }) else { return nil }
                target = found
            }
        }
        return (target, try await freshConfig(target))
    }

    /// A VM's config for a scan: at most `scanSeconds` old, never older than the driver's own last change to it.
    package func scanConfig(_ vm: VMRef) async throws -> VMConfig {
        let now = ProcessInfo.processInfo.systemUptime
        if let cached = scanned.withLock({ $0.configs[vm.key] }), now - cached.at < scanSeconds { return cached.config }
        return try await freshConfig(vm)
    }

    /// Configs of `vms` for a scan, read in parallel; VMs deleted meanwhile are left out.
    package func scanConfigs(_ vms: [VMRef], fresh: Bool = false) async throws -> [(VMRef, VMConfig)] {
        try await withThrowingTaskGroup(of: (VMRef, VMConfig)?.self) { group in
            for vm in vms {
                group.addTask {
                    do {
                        return (vm, fresh ? try await self.freshConfig(vm) : try await self.scanConfig(vm))
                    } catch ProxmoxError.notFound {
                        return nil  // deleted since the listing
                    }
                }
            }
            var configs: [(VMRef, VMConfig)] = []
            for try await entry in group { if let entry { configs.append(entry) } }
            return configs.sorted { $0.0.vmid < $1.0.vmid }
        }
    }

    /// Every VM config that references the volume: (VM, config key). The
    /// record VM that owns a restored volume is not an attachment, the
    /// driver's snapshot and record VMs never hold another volume, and a
    /// snapshot source VM names one only while its snapshot is taken (never
    /// running), so they are not read.
    /// `fresh` reads every config now, for a decision another tool's change of the
    /// last `scanSeconds` must not mislead.
    package func attachments(of handle: VolumeHandle, storage: StorageRef, fresh: Bool = false) async throws -> [(VMRef, String)] {
        let volid = handle.volid(ownerVMID: ownerVMID, storageType: storage.type)
        let candidates = try await vms(handle.cluster).filter {
            (handle.node == nil || $0.node == handle.node) && $0.vmid != handle.ownerVMID && !ProxmoxVolumes.isCopyVM($0)
                && !ProxmoxVolumes.isSourceVM($0)
        }
        var found: [(VMRef, String)] = []
        for (vm, vmConfig) in try await scanConfigs(candidates, fresh: fresh) where !Self.disks(holding: volid, in: vmConfig).isEmpty {
            // A holder is read again: callers refuse, detach or release on it.
            let now: VMConfig
            do {
                now = try await freshConfig(vm)
            } catch ProxmoxError.notFound {
                continue  // deleted since the listing
            }
            found += Self.disks(holding: volid, in: now).map { (vm, $0) }
        }
        return found
    }

    /// The disk keys that hold `volid` in any state: current (also with a
    /// pending delete, which the running VM still has) or pending (an attach
    /// not yet hot-plugged, which the VM gets when it restarts).
    package static func disks(holding volid: String, in config: VMConfig) -> [String] {
        let current = disks(holding: volid, in: config.values).map(\.key)
        let pending = disks(holding: volid, in: config.pending).map(\.key)
        return Array(Set(current + pending)).sorted()
    }

    /// `scsi3`, `virtio0`, `unused1`: run for every key of every config a scan reads.
    package static func isDiskKey(_ key: String) -> Bool {
        diskKeyPrefixes.contains { key.isNumbered($0) }
    }

    static let diskKeyPrefixes = ["scsi", "virtio", "sata", "ide", "unused"]

    package static func volid(of diskValue: String) -> String {
        String(diskValue.split(separator: ",", maxSplits: 1).first ?? "")
    }

    /// The disk keys of a VM config that hold `volid`, in key order.
    package static func disks(holding volid: String, in values: [String: String]) -> [(key: String, value: String)] {
        values.filter { isDiskKey($0.key) && self.volid(of: $0.value) == volid }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// `format` (raw, qcow2) only on file storages: pve-storage Plugin.pm alloc_image
    /// checks it against the file name's extension.
    package func allocate(_ handle: VolumeHandle, storage: StorageRef, node: String, bytes: Int64, format: String? = nil) async throws {
        let mebibytes = (bytes + (1 << 20) - 1) >> 20
        _ = try await client(handle.cluster).allocateVolume(node: node, storage: storage.id, vmid: ownerVMID, name: handle.volume,
                                                            size: "\(mebibytes)M", format: format)
        invalidate(handle.cluster)
    }

    package func delete(_ handle: VolumeHandle, storage: StorageRef) async throws {
        let node = storage.node(for: handle)
        do {
            try await client(handle.cluster).deleteVolume(node: node, storage: storage.id,
                                                          volid: handle.volid(ownerVMID: ownerVMID, storageType: storage.type))
        } catch ProxmoxError.notFound {
            // Already gone: deleting is done.
        }
        invalidate(handle.cluster)
    }
}
