import ProxmoxAPI

/// The Proxmox calls the domain makes, and no others: the libcurl
/// `ProxmoxClient` in production, an in-memory cluster in tests. Keeping it
/// this narrow is what makes every decision above it testable without a
/// server (the way aws-ebs-csi-driver's controller sits on pkg/cloud's interface).
package protocol ProxmoxCluster: Sendable {
    func clusterResources(type: ResourceType?) async throws -> [ClusterResource]
    /// The lowest free vmid (GET /cluster/nextid).
    func nextVMID() async throws -> Int
    /// Starts a VM create task; its UPID, or nil when Proxmox answered none.
    func startCreateVM(node: String, vmid: Int, settings: [(String, String)]) async throws -> String?
    func waitForTask(_ upid: String, timeout: Double, maxPollInterval: Double) async throws -> String
    func vmList(node: String) async throws -> [(vmid: Int, name: String?)]
    /// The config with pending changes applied (GET …/config).
    func vmConfig(node: String, vmid: Int) async throws -> VMConfig
    /// Current values, pending changes and digest (GET …/pending).
    func vmConfigWithPending(node: String, vmid: Int) async throws -> VMConfig
    func activeTasks(node: String, vmid: Int) async throws -> [String]
    /// A config change as a task (POST …/config), waited for.
    func updateVMConfig(node: String, vmid: Int, set: [(String, String)], delete: [String], revert: [String],
                        digest: String?, timeout: Double) async throws
    /// A config change that starts no task (PUT …/config).
    func updateVMConfigSync(node: String, vmid: Int, set: [(String, String)], delete: [String], digest: String?) async throws
    func resize(node: String, vmid: Int, disk: String, size: String, digest: String?) async throws
    func destroyVM(node: String, vmid: Int, timeout: Double) async throws
    func volumes(node: String, storage: String, vmid: Int?) async throws -> [StorageVolume]
    func allocateVolume(node: String, storage: String, vmid: Int, name: String, size: String, format: String?) async throws -> String
    func deleteVolume(node: String, storage: String, volid: String) async throws
    /// A VM's snapshots (GET …/snapshot, without `current`).
    func snapshots(node: String, vmid: Int) async throws -> [VMSnapshot]
    /// A VM snapshot: a storage snapshot of each of its drives (POST …/snapshot), waited for.
    func createSnapshot(node: String, vmid: Int, name: String, description: String) async throws
    func deleteSnapshot(node: String, vmid: Int, name: String) async throws
    /// Starts a full clone, of a snapshot when named (POST …/clone); its UPID.
    func startClone(node: String, vmid: Int, newID: Int, name: String, description: String,
                    snapshot: String?, storage: String?) async throws -> String?
    /// Starts an offline migration of a stopped VM and its own local volumes (POST …/migrate); its UPID.
    func startMigrate(node: String, vmid: Int, target: String) async throws -> String?
}

extension ProxmoxClient: ProxmoxCluster {}

/// The calls as the domain writes them, with what it leaves out at its usual value.
extension ProxmoxCluster {
    func clusterResources() async throws -> [ClusterResource] { try await clusterResources(type: nil) }

    func waitForTask(_ upid: String) async throws -> String { try await waitForTask(upid, timeout: 600, maxPollInterval: 2) }

    func updateVMConfig(node: String, vmid: Int, set: [(String, String)] = [], delete: [String] = [], revert: [String] = [],
                        digest: String? = nil) async throws {
        try await updateVMConfig(node: node, vmid: vmid, set: set, delete: delete, revert: revert, digest: digest, timeout: 600)
    }

    func updateVMConfigSync(node: String, vmid: Int, set: [(String, String)] = [], delete: [String] = []) async throws {
        try await updateVMConfigSync(node: node, vmid: vmid, set: set, delete: delete, digest: nil)
    }

    package func resize(node: String, vmid: Int, disk: String, size: String) async throws {
        try await resize(node: node, vmid: vmid, disk: disk, size: size, digest: nil)
    }

    func allocateVolume(node: String, storage: String, vmid: Int, name: String, size: String) async throws -> String {
        try await allocateVolume(node: node, storage: storage, vmid: vmid, name: name, size: size, format: nil)
    }
}
