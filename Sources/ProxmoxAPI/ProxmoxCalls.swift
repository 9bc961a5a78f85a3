/// The Proxmox calls the driver makes, typed. Paths and parameters follow
/// the official API schema; calls that start a task wait for it.

public struct ProxmoxVersion: Sendable, Equatable {
    public var version: String
    public var release: String
}

public struct ClusterResource: Sendable, Equatable {
    public var id: String
    public var type: String
    public var node: String
    public var vmid: Int?
    public var name: String?
    public var status: String?
    public var storage: String?
    public var pluginType: String?
    public var shared: Bool
    public var content: [String]
    public var disk: Int64
    public var maxDisk: Int64
    public var lock: String?
    public var template: Bool
    /// A guest's tags. Unlike its name, which comes from pvestatd's last round
    /// (pve-manager API2Tools.pm extract_vm_stats reads it from the rrd data, up
    /// to ~10 s old, and a reused vmid can show its last owner's), `lock` and
    /// `tags` are read from the config in pmxcfs at each call (API2/Cluster.pm
    /// resources: get_guest_config_properties([lock tags]), since pve-manager 7.3).
    public var tags: [String]

    public init(id: String, type: String, node: String, vmid: Int? = nil, name: String? = nil, status: String? = nil,
                storage: String? = nil, pluginType: String? = nil, shared: Bool = false, content: [String] = [],
                disk: Int64 = 0, maxDisk: Int64 = 0, lock: String? = nil, template: Bool = false, tags: [String] = []) {
        (self.id, self.type, self.node, self.vmid, self.name, self.status) = (id, type, node, vmid, name, status)
        (self.storage, self.pluginType, self.shared, self.content) = (storage, pluginType, shared, content)
        (self.disk, self.maxDisk, self.lock, self.template, self.tags) = (disk, maxDisk, lock, template, tags)
    }

    /// A config's `tags` value as a list: pve-guest-common splits it on `;`, `,` and spaces.
    public static func tagList(_ text: String) -> [String] {
        text.split(whereSeparator: { $0 == ";" || $0 == "," || $0 == " " }).map(String.init)
    }

    init(_ json: JSONValue) {
        id = json["id"].string ?? ""
        type = json["type"].string ?? ""
        node = json["node"].string ?? ""
        vmid = json["vmid"].int.map { Int($0) }
        name = json["name"].string
        status = json["status"].string
        storage = json["storage"].string
        pluginType = json["plugintype"].string
        shared = json["shared"].bool ?? false
        content = (json["content"].string ?? "").split(separator: ",").map(String.init)
        disk = json["disk"].int ?? 0
        maxDisk = json["maxdisk"].int ?? 0
        lock = json["lock"].string
        template = json["template"].bool ?? false
        tags = Self.tagList(json["tags"].string ?? "")
    }
}

public enum ResourceType: String, Sendable {
    case vm, storage, node
}

public struct StorageStatus: Sendable, Equatable {
    public var storage: String
    public var type: String
    public var content: [String]
    public var active: Bool
    public var enabled: Bool
    public var shared: Bool
    public var total: Int64
    public var used: Int64
    public var available: Int64

    init(_ json: JSONValue, storage: String? = nil) {
        self.storage = storage ?? json["storage"].string ?? ""
        type = json["type"].string ?? ""
        content = (json["content"].string ?? "").split(separator: ",").map(String.init)
        active = json["active"].bool ?? false
        enabled = json["enabled"].bool ?? true
        shared = json["shared"].bool ?? false
        total = json["total"].int ?? 0
        used = json["used"].int ?? 0
        available = json["avail"].int ?? 0
    }
}

public struct StorageVolume: Sendable, Equatable {
    public var volid: String
    public var format: String
    public var size: Int64
    public var vmid: Int?
    public var createdAt: Int64

    public init(volid: String, format: String = "raw", size: Int64, vmid: Int? = nil, createdAt: Int64 = 0) {
        (self.volid, self.format, self.size, self.vmid, self.createdAt) = (volid, format, size, vmid, createdAt)
    }

    init(_ json: JSONValue) {
        volid = json["volid"].string ?? ""
        format = json["format"].string ?? ""
        size = json["size"].int ?? 0
        vmid = json["vmid"].int.map { Int($0) }
        createdAt = json["ctime"].int ?? 0
    }
}

public struct VolumeInfo: Sendable, Equatable {
    public var path: String
    public var size: Int64
    public var format: String
}

/// A VM's configuration and the digest that guards changes to it.
///
/// qemu-server writes every change to a `[PENDING]` section first and applies
/// it to a running VM only when it can hot-plug it (API2/Qemu.pm update_vm,
/// QemuServer.pm vmconfig_hotplug_pending); what it cannot stays pending until
/// the VM restarts. Read through `vmConfigWithPending`, `values` are the
/// current ones — what the running VM has — and `pending` / `pendingDelete`
/// the changes not yet applied. Read through `vmConfig`, `values` have the
/// pending changes applied (Proxmox's default answer) and the rest is empty.
public struct VMConfig: Sendable, Equatable {
    public var values: [String: String]
    public var digest: String
    /// Keys set or changed but not yet applied, with their new values.
    public var pending: [String: String]
    /// Keys whose removal is not yet applied (still in `values`).
    public var pendingDelete: Set<String>

    public init(values: [String: String], digest: String, pending: [String: String] = [:], pendingDelete: Set<String> = []) {
        self.values = values
        self.digest = digest
        self.pending = pending
        self.pendingDelete = pendingDelete
    }

    public subscript(key: String) -> String? { values[key] }

    /// What the config holds in any state: the current values, and pending
    /// values of keys that have none yet. A slot is free only when free here.
    public var held: [String: String] { values.merging(pending) { current, _ in current } }

    /// Whether `key`'s current value is what the VM will keep: no pending change or delete.
    public func isSettled(_ key: String) -> Bool { pending[key] == nil && !pendingDelete.contains(key) }
}

public struct VMSnapshot: Sendable, Equatable {
    public var name: String
    public var description: String
    public var time: Int64?

    public init(name: String, description: String, time: Int64?) {
        (self.name, self.description, self.time) = (name, description, time)
    }
}

public struct TaskStatus: Sendable, Equatable {
    public var upid: String
    public var type: String
    public var running: Bool
    public var exitStatus: String?
}

/// Where move_disk sends a disk.
public enum DiskDestination: Sendable {
    case storage(String)
    case vm(vmid: Int, disk: String)
}

extension ProxmoxClient {
    private func segment(_ text: String) -> String { FormEncoding.pathSegment(text) }
    private func vmPath(_ node: String, _ vmid: Int) -> String { "/nodes/\(segment(node))/qemu/\(vmid)" }

    public func version() async throws -> ProxmoxVersion {
        let data = try await call("GET", "/version")
        return ProxmoxVersion(version: data["version"].string ?? "", release: data["release"].string ?? "")
    }

    public func clusterResources(type: ResourceType? = nil) async throws -> [ClusterResource] {
        let data = try await call("GET", "/cluster/resources", type.map { [("type", $0.rawValue)] } ?? [])
        return (data.array ?? []).map(ClusterResource.init)
    }

    public func nextVMID() async throws -> Int {
        guard let id = try await call("GET", "/cluster/nextid").int else {
            throw ProxmoxError.malformedResponse("cluster/nextid did not answer a number")
        }
        return Int(id)
    }

    public func storages(node: String) async throws -> [StorageStatus] {
        let data = try await call("GET", "/nodes/\(segment(node))/storage")
        return (data.array ?? []).map { StorageStatus($0) }
    }

    public func storageStatus(node: String, storage: String) async throws -> StorageStatus {
        StorageStatus(try await call("GET", "/nodes/\(segment(node))/storage/\(segment(storage))/status"), storage: storage)
    }

    public func volumes(node: String, storage: String, vmid: Int? = nil) async throws -> [StorageVolume] {
        var parameters = [("content", "images")]
        if let vmid { parameters.append(("vmid", String(vmid))) }
        let data = try await call("GET", "/nodes/\(segment(node))/storage/\(segment(storage))/content", parameters)
        return (data.array ?? []).map(StorageVolume.init)
    }

    /// Allocates a volume; `size` in Proxmox's form (`1024`, `512M`, `10G`).
    /// Never retried blindly: a repeat could allocate twice.
    public func allocateVolume(node: String, storage: String, vmid: Int, name: String, size: String,
                               format: String? = nil) async throws -> String {
        var parameters = [("vmid", String(vmid)), ("filename", name), ("size", size)]
        if let format { parameters.append(("format", format)) }
        let data = try await call("POST", "/nodes/\(segment(node))/storage/\(segment(storage))/content", parameters,
                                  idempotency: .notIdempotent)
        guard let volid = data.string else { throw ProxmoxError.malformedResponse("allocation answered no volume id") }
        return volid
    }

    public func volumeInfo(node: String, storage: String, volid: String) async throws -> VolumeInfo {
        let data = try await call("GET", "/nodes/\(segment(node))/storage/\(segment(storage))/content/\(segment(volid))")
        return VolumeInfo(path: data["path"].string ?? "", size: data["size"].int ?? 0, format: data["format"].string ?? "")
    }

    public func deleteVolume(node: String, storage: String, volid: String) async throws {
        let data = try await call("DELETE", "/nodes/\(segment(node))/storage/\(segment(storage))/content/\(segment(volid))",
                                  [("delay", "5")], idempotency: .idempotent)
        try await finish(data)
    }

    public func vmConfig(node: String, vmid: Int) async throws -> VMConfig {
        let data = try await call("GET", vmPath(node, vmid) + "/config")
        var values = (data.object ?? [:]).compactMapValues { $0.string }
        let digest = values.removeValue(forKey: "digest") ?? ""
        return VMConfig(values: values, digest: digest)
    }

    /// The VMs whose configs are on `node` (GET /nodes/{node}/qemu): names as
    /// their configs say now. /cluster/resources takes names from pvestatd,
    /// which refreshes them every 10 s (pve-manager API2Tools.pm).
    public func vmList(node: String) async throws -> [(vmid: Int, name: String?)] {
        let data = try await call("GET", "/nodes/\(segment(node))/qemu")
        return (data.array ?? []).compactMap { item in
            guard let vmid = item["vmid"].int else { return nil }
            return (Int(vmid), item["name"].string)
        }
    }

    /// Task ids of the VM's tasks running on `node` (GET /nodes/{node}/tasks?source=active).
    public func activeTasks(node: String, vmid: Int) async throws -> [String] {
        let data = try await call("GET", "/nodes/\(segment(node))/tasks", [("vmid", String(vmid)), ("source", "active")])
        return (data.array ?? []).compactMap { $0["upid"].string }
    }

    /// The current config, its pending changes and its digest, in one read
    /// (GET …/pending: pve-guest-common GuestHelpers config_with_pending_array,
    /// whose items include the loaded config's `digest`).
    public func vmConfigWithPending(node: String, vmid: Int) async throws -> VMConfig {
        let data = try await call("GET", vmPath(node, vmid) + "/pending")
        var config = VMConfig(values: [:], digest: "")
        for item in data.array ?? [] {
            guard let key = item["key"].string else { continue }
            if key == "digest" {
                config.digest = item["value"].string ?? ""
                continue
            }
            if let value = item["value"].string { config.values[key] = value }
            if let pending = item["pending"].string { config.pending[key] = pending }
            if let delete = item["delete"].int, delete > 0 { config.pendingDelete.insert(key) }
        }
        return config
    }

    /// Changes a VM's config (POST, as a task) and waits for it. Pass the
    /// digest read with the config so a concurrent change is detected;
    /// `revert` drops pending changes of those keys.
    public func updateVMConfig(node: String, vmid: Int, set: [(String, String)] = [], delete: [String] = [],
                               revert: [String] = [], digest: String? = nil, timeout: Double = 600) async throws {
        var parameters = set
        if !delete.isEmpty { parameters.append(("delete", delete.joined(separator: ","))) }
        if !revert.isEmpty { parameters.append(("revert", revert.joined(separator: ","))) }
        if let digest { parameters.append(("digest", digest)) }
        parameters.append(("background_delay", "5"))
        let data = try await call("POST", vmPath(node, vmid) + "/config", parameters, idempotency: .idempotent)
        try await finish(data, timeout: timeout)
    }

    /// The synchronous variant (PUT), for changes that start no task.
    public func updateVMConfigSync(node: String, vmid: Int, set: [(String, String)] = [], delete: [String] = [],
                                   digest: String? = nil) async throws {
        var parameters = set
        if !delete.isEmpty { parameters.append(("delete", delete.joined(separator: ","))) }
        if let digest { parameters.append(("digest", digest)) }
        _ = try await call("PUT", vmPath(node, vmid) + "/config", parameters, idempotency: .idempotent)
    }

    public func unlink(node: String, vmid: Int, keys: [String], force: Bool = false) async throws {
        var parameters = [("idlist", keys.joined(separator: ","))]
        if force { parameters.append(("force", "1")) }
        _ = try await call("PUT", vmPath(node, vmid) + "/unlink", parameters, idempotency: .idempotent)
    }

    /// Resizes a disk: `+2G` adds, `10G` sets. Only an absolute size is repeated on failure.
    public func resize(node: String, vmid: Int, disk: String, size: String, digest: String? = nil) async throws {
        var parameters = [("disk", disk), ("size", size)]
        if let digest { parameters.append(("digest", digest)) }
        let data = try await call("PUT", vmPath(node, vmid) + "/resize", parameters,
                                  idempotency: size.hasPrefix("+") ? .notIdempotent : .idempotent)
        try await finish(data)
    }

    public func moveDisk(node: String, vmid: Int, disk: String, to destination: DiskDestination,
                         deleteSource: Bool = false, digest: String? = nil) async throws {
        var parameters = [("disk", disk)]
        switch destination {
        case let .storage(storage): parameters.append(("storage", storage))
        case let .vm(target, targetDisk): parameters += [("target-vmid", String(target)), ("target-disk", targetDisk)]
        }
        if deleteSource { parameters.append(("delete", "1")) }
        if let digest { parameters.append(("digest", digest)) }
        try await finish(try await call("POST", vmPath(node, vmid) + "/move_disk", parameters))
    }

    public func createVM(node: String, vmid: Int, settings: [(String, String)]) async throws {
        try await finish(try await call("POST", "/nodes/\(segment(node))/qemu", [("vmid", String(vmid))] + settings))
    }

    /// Starts creating a VM and returns its task's UPID without waiting (a
    /// create that imports a disk copies data and may take long).
    public func startCreateVM(node: String, vmid: Int, settings: [(String, String)]) async throws -> String? {
        try await call("POST", "/nodes/\(segment(node))/qemu", [("vmid", String(vmid))] + settings).string
    }

    /// Destroys a VM (stopped) and the volumes it owns.
    public func destroyVM(node: String, vmid: Int, timeout: Double = 600) async throws {
        try await finish(try await call("DELETE", vmPath(node, vmid), idempotency: .idempotent), timeout: timeout)
    }

    public func snapshots(node: String, vmid: Int) async throws -> [VMSnapshot] {
        let data = try await call("GET", vmPath(node, vmid) + "/snapshot")
        return (data.array ?? []).compactMap { item in
            guard let name = item["name"].string, name != "current" else { return nil }
            return VMSnapshot(name: name, description: item["description"].string ?? "", time: item["snaptime"].int)
        }
    }

    public func createSnapshot(node: String, vmid: Int, name: String, description: String = "") async throws {
        var parameters = [("snapname", name)]
        if !description.isEmpty { parameters.append(("description", description)) }
        try await finish(try await call("POST", vmPath(node, vmid) + "/snapshot", parameters))
    }

    public func deleteSnapshot(node: String, vmid: Int, name: String) async throws {
        try await finish(try await call("DELETE", vmPath(node, vmid) + "/snapshot/\(segment(name))", idempotency: .idempotent))
    }

    public func clone(node: String, vmid: Int, newID: Int, name: String? = nil, snapshot: String? = nil,
                      full: Bool = true, storage: String? = nil, targetNode: String? = nil) async throws {
        var parameters = [("newid", String(newID)), ("full", full ? "1" : "0")]
        if let name { parameters.append(("name", name)) }
        if let snapshot { parameters.append(("snapname", snapshot)) }
        if let storage { parameters.append(("storage", storage)) }
        if let targetNode { parameters.append(("target", targetNode)) }
        try await finish(try await call("POST", vmPath(node, vmid) + "/clone", parameters))
    }

    /// Starts a full clone (of `snapshot` when given) and returns its task's UPID
    /// without waiting: the copy runs as long as the disks take.
    public func startClone(node: String, vmid: Int, newID: Int, name: String, description: String,
                           snapshot: String?, storage: String?) async throws -> String? {
        var parameters = [("newid", String(newID)), ("full", "1"), ("name", name), ("description", description)]
        if let snapshot { parameters.append(("snapname", snapshot)) }
        if let storage { parameters.append(("storage", storage)) }
        return try await call("POST", vmPath(node, vmid) + "/clone", parameters).string
    }

    /// Starts an offline migration of a stopped VM to `target` (POST …/migrate, VM.Migrate);
    /// its UPID. qemu-server copies every local volume the VM owns, unused ones too.
    public func startMigrate(node: String, vmid: Int, target: String) async throws -> String? {
        try await call("POST", vmPath(node, vmid) + "/migrate", [("target", target)]).string
    }

    public func taskStatus(upid: String) async throws -> TaskStatus {
        let node = UPID.node(of: upid)
        let data = try await call("GET", "/nodes/\(segment(node))/tasks/\(segment(upid))/status")
        return TaskStatus(upid: upid, type: data["type"].string ?? "", running: data["status"].string == "running",
                          exitStatus: data["exitstatus"].string)
    }
}
