import ProxmoxAPI
import ProxmoxDomain
import ProxmoxDomain

/// A client for each configured cluster, and the readiness they feed: the
/// controller is ready while every cluster's API has answered recently.
public final class ProxmoxClusters: Sendable {
    public let config: DriverConfig
    public let clients: [String: ProxmoxClient]
    public let checks: [RecentSuccess]

    public init(config: DriverConfig, metrics: DriverMetrics? = nil) {
        self.config = config
        var clients: [String: ProxmoxClient] = [:]
        var checks: [RecentSuccess] = []
        for cluster in config.clusters {
            let check = RecentSuccess(name: "proxmox-api \(cluster.name)", maxAgeSeconds: 3 * config.probeInterval)
            checks.append(check)
            clients[cluster.name] = ProxmoxClient(endpoint: cluster.endpoint(requestTimeout: config.requestTimeout),
                                                  onAnswer: { check.recordSuccess() },
                                                  observer: metrics?.proxmoxObserver(cluster: cluster.name))
        }
        self.clients = clients
        self.checks = checks
    }

    /// The clients in the config's order, as the domain takes them.
    package var ordered: [(name: String, client: any ProxmoxCluster)] {
        config.clusters.compactMap { cluster in clients[cluster.name].map { (cluster.name, $0) } }
    }

    public var readiness: Readiness { Readiness(checks) }

    /// Asks every cluster for its version every `probeInterval` seconds, so
    /// readiness stays true to the API while the driver is otherwise idle.
    public func keepReadinessCurrent() -> Task<Void, Never> {
        let clients = Array(clients.values)
        let interval = config.probeInterval
        return Task {
            while !Task.isCancelled {
                await withTaskGroup(of: Void.self) { group in
                    for client in clients {
                        group.addTask { _ = try? await client.version() }
                    }
                }
                try? await Task.sleep(nanoseconds: UInt64(interval * 1_000_000_000))
            }
        }
    }
}
