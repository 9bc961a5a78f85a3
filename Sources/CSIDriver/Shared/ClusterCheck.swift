import FoundationEssentials
import ProxmoxAPI

/// What `proxmox-csi check` finds out about one cluster.
public struct ClusterReport: Sendable {
    public struct StorageLine: Sendable {
        public var node: String
        public var storage: String
        public var type: String
        public var shared: Bool
        public var available: Int64
        public var total: Int64
    }

    public struct VolumeLine: Sendable {
        public var node: String
        public var volid: String
        public var size: Int64
    }

    public var cluster: String
    public var url: String
    public var version: String?
    public var storages: [StorageLine] = []
    public var driverVolumes: [VolumeLine] = []
    public var missingPrivileges: [String] = []
    /// Why the cluster cannot be used, in words that say what to fix.
    public var problem: String?

    public var isHealthy: Bool { problem == nil && missingPrivileges.isEmpty }
}

/// The privileges the driver needs, and on which ACL path.
public let requiredPrivileges: [(path: String, privilege: String, why: String)] = [
    ("/storage", "Datastore.AllocateSpace", "allocate volumes"),
    ("/storage", "Datastore.Allocate", "delete volumes"),
    ("/storage", "Datastore.Audit", "list volumes and free space"),
    ("/vms", "VM.Config.Disk", "attach and detach disks"),
    ("/vms", "VM.Audit", "read VM configs"),
    ("/vms", "VM.Allocate", "create the VMs that hold snapshots"),
    // Creating those VMs sets their name, description, memory and cores.
    ("/vms", "VM.Config.Options", "name and describe the VMs that hold snapshots"),
    ("/vms", "VM.Config.Memory", "create the VMs that hold snapshots (64 MiB)"),
    ("/vms", "VM.Config.CPU", "create the VMs that hold snapshots (1 core)"),
    ("/vms", "VM.Snapshot", "snapshots"),
    ("/vms", "VM.Clone", "restore snapshots"),
]

public enum ClusterCheck {
    public static func run(_ cluster: DriverConfig.Cluster, config: DriverConfig, client: ProxmoxClient) async -> ClusterReport {
        var report = ClusterReport(cluster: cluster.name, url: cluster.url)
        do {
            report.version = try await client.version().version
            let resources = try await client.clusterResources(type: .storage)
            var seenShared = Set<String>()
            for resource in resources where resource.content.contains("images") {
                guard let storage = resource.storage else { continue }
                report.storages.append(.init(node: resource.node, storage: storage, type: resource.pluginType ?? "?",
                                             shared: resource.shared, available: resource.maxDisk - resource.disk,
                                             total: resource.maxDisk))
                // A shared storage is one pool: list its volumes once.
                if resource.shared, !seenShared.insert(storage).inserted { continue }
                for volume in try await client.volumes(node: resource.node, storage: storage, vmid: config.ownerVMID) {
                    report.driverVolumes.append(.init(node: resource.shared ? "" : resource.node, volid: volume.volid,
                                                      size: volume.size))
                }
            }
            let granted = try await client.call("GET", "/access/permissions")
            report.missingPrivileges = missing(in: granted)
        } catch {
            report.problem = explain(error, cluster: cluster)
        }
        return report
    }

    static func missing(in granted: JSONValue) -> [String] {
        let acl = granted.object ?? [:]
        return requiredPrivileges.compactMap { need in
            let held = acl.contains { path, privileges in
                (path == "/" || need.path == path || need.path.hasPrefix(path + "/")) && privileges[need.privilege].bool == true
            }
            return held ? nil : "\(need.privilege) on \(need.path) (to \(need.why))"
        }
    }

    /// Turns an error into what the operator should check.
    public static func explain(_ error: any Error, cluster: DriverConfig.Cluster) -> String {
        guard let error = error as? ProxmoxError else { return "\(error)" }
        switch error {
        case let .transport(transport):
            switch transport {
            case let .cannotResolve(detail):
                return "cannot resolve the host of \(cluster.url) (\(detail)): check the url"
            case let .cannotConnect(detail):
                return "nothing answers at \(cluster.url) (\(detail)): check the host and port (Proxmox listens on 8006) and any firewall"
            case let .tlsVerification(detail):
                let trust = cluster.caFile.map { "the CA in \($0)" } ?? "the system's CAs"
                return "the server's TLS certificate is not trusted by \(trust) (\(detail)): set caFile to the cluster's CA "
                    + "(/etc/pve/pve-root-ca.pem on a Proxmox node)"
            case let .timedOut(detail):
                return "no answer from \(cluster.url) in time (\(detail)): check the url and the network"
            default:
                return "cannot talk to \(cluster.url): \(transport)"
            }
        case let .authenticationFailed(reason):
            switch cluster.credentials {
            case let .apiToken(id, _):
                return "Proxmox refused the API token \(id) (401 \(reason)): check tokenID and tokenSecret, and that the token exists and has not expired"
            case let .password(user, _):
                return "Proxmox refused the login of \(user) (401 \(reason)): check username and password"
            }
        case let .permissionDenied(path, privilege, message):
            if let path, let privilege {
                return "the credentials lack \(privilege) on \(path): grant a role with it (see the README's Proxmox role)"
            }
            return "permission denied: \(message)"
        default:
            return error.description
        }
    }
}
