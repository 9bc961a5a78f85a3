import CommandLineOptions
import CSIDriver
import FoundationEssentials
import ProxmoxAPI
import TextSupport

/// Connects to every cluster in the config and reports what the driver would see.
struct Check: DriverCommand {
    static let spec = CommandSpec(
        name: "check",
        abstract: "Connect to the Proxmox clusters in a config file and report version, storages, the driver's volumes and missing privileges.",
        options: [
            .option("config", help: "The driver's config file."),
            .option("cluster", help: "Only this cluster (by name)."),
        ])

    let config: String
    let cluster: String?

    init(_ options: ParsedOptions) throws {
        config = try options.required("config")
        cluster = options.value("cluster")
    }

    func run() async throws {
        let loaded = try loadConfig(config)
        let clusters = loaded.clusters.filter { cluster == nil || $0.name == cluster }
        guard !clusters.isEmpty else { throw UsageError("--cluster: no cluster named \"\(cluster ?? "")\" in \(config)") }
        for warning in loaded.warnings { print("warning: \(warning)") }
        var healthy = true
        for cluster in clusters {
            let client = ProxmoxClient(endpoint: cluster.endpoint(requestTimeout: loaded.requestTimeout),
                                       retry: RetryPolicy(maxAttempts: 2))
            let report = await ClusterCheck.run(cluster, config: loaded, client: client)
            print(render(report, ownerVMID: loaded.ownerVMID), terminator: "")
            healthy = healthy && report.isHealthy
        }
        if !healthy { throw ExitStatus(code: 1) }
    }

    func render(_ report: ClusterReport, ownerVMID: Int) -> String {
        var out = "cluster \(report.cluster) (\(report.url))"
        guard report.problem == nil else { return out + "\n  problem: \(report.problem!)\n" }
        out += ": Proxmox VE \(report.version ?? "?")\n  storages for disk images:\n"
        for line in report.storages {
            let free = (Double(line.available) / 1_073_741_824).formatted(decimals: 1)
            let total = (Double(line.total) / 1_073_741_824).formatted(decimals: 1)
            let columns = [line.node.padded(to: 8), line.storage.padded(to: 14), line.type.padded(to: 8),
                           (line.shared ? "shared" : "local").padded(to: 7)]
            out += "    " + columns.joined(separator: " ") + " \(free) GiB free of \(total) GiB\n"
        }
        out += "  driver volumes (owner vmid \(ownerVMID)): \(report.driverVolumes.count)\n"
        for volume in report.driverVolumes {
            let where_ = volume.node.isEmpty ? "" : "\(volume.node)/"
            out += "    \(where_)\(volume.volid)  \((Double(volume.size) / 1_073_741_824).formatted(decimals: 1)) GiB\n"
        }
        if report.missingPrivileges.isEmpty {
            out += "  privileges: everything the driver needs\n"
        } else {
            out += "  missing privileges:\n" + report.missingPrivileges.map { "    \($0)\n" }.joined()
        }
        return out
    }
}
