#if canImport(Glibc)
import Glibc
#endif
import BlockDevice
import CommandLineOptions
import CSIDriver
import Logging
import Metrics
import ProxmoxDomain
import Synchronization
import UnaryGRPC

/// Serves the CSI services until SIGTERM or SIGINT.
struct Serve: DriverCommand {
    static let spec = CommandSpec(name: "serve", abstract: "Serve the CSI services on a socket (the default command).", options: [
        .option("mode", help: "Services to serve: controller (Identity + Controller), node (Identity + Node), or all.",
                default: "all", choices: DriverMode.allCases.map(\.rawValue)),
        .option("endpoint", help: "unix:///path/csi.sock, a bare socket path, or tcp://HOST:PORT. Default: $CSI_ENDPOINT, else unix:///csi/csi.sock."),
        .option("config", help: "The driver's config file (Proxmox clusters and storage profiles)."),
        .option("node-id", help: "This node's name as Kubernetes knows it. Default: $NODE_NAME, else the host name."),
        .option("driver-name", help: "The CSI driver name (the CSIDriver object's name).", default: DriverInfo.defaultName),
        .option("log-level", help: "How much to log.", default: "info", choices: Logger.Level.allCases.map(\.rawValue)),
        .option("log-format", help: "One line per record, as text or json.", default: "text", choices: LogFormat.allCases.map(\.rawValue)),
        .option("shutdown-grace", help: "Seconds in-flight calls get to finish after SIGTERM.", default: "10"),
        .option("metrics-address", help: "Serve Prometheus metrics at http://HOST:PORT/metrics (\":9809\" = every address). Default: off."),
        .option("kubelet-dir", help: "Node: staging and target paths must lie inside this directory.", default: "/var/lib/kubelet"),
        .option("sys-root", help: "Node: where sysfs is (disks are found under <sys-root>/block).", default: "/sys"),
        .option("dev-root", help: "Node: where device nodes are.", default: "/dev"),
        .option("device-wait", help: "Node: seconds NodeStageVolume waits for a hot-plugged disk to appear.", default: "60"),
        .option("region", help: "Node: topology region (the Proxmox cluster) when the node has no config to ask Proxmox. Default: $NODE_REGION."),
        .option("zone", help: "Node: topology zone (the Proxmox node) when the node has no config to ask Proxmox. Default: $NODE_ZONE."),
    ])

    let mode: DriverMode
    let endpoint: String?
    let config: String?
    let nodeID: String?
    let driverName: String
    let logLevel: Logger.Level
    let logFormat: LogFormat
    let shutdownGrace: Double
    let metricsAddress: String?
    let kubeletDir: String
    let sysRoot: String
    let devRoot: String
    let deviceWait: Double
    let region: String?
    let zone: String?

    init(_ options: ParsedOptions) throws {
        mode = try options.choice("mode", default: .all)
        endpoint = options.value("endpoint")
        config = options.value("config")
        nodeID = options.value("node-id")
        driverName = options.value("driver-name") ?? DriverInfo.defaultName
        logLevel = try options.choice("log-level", default: .info)
        logFormat = try options.choice("log-format", default: .text)
        shutdownGrace = try options.number("shutdown-grace", default: 10)
        metricsAddress = options.value("metrics-address")
        kubeletDir = options.value("kubelet-dir") ?? "/var/lib/kubelet"
        sysRoot = options.value("sys-root") ?? "/sys"
        devRoot = options.value("dev-root") ?? "/dev"
        deviceWait = try options.number("device-wait", default: 60)
        region = options.value("region")
        zone = options.value("zone")
        try validate()
    }

    func validate() throws {
        _ = try resolvedEndpoint()
        if let problem = DriverInfo.problem(withName: driverName) {
            throw UsageError("invalid --driver-name \"\(driverName)\": \(problem)")
        }
        guard shutdownGrace >= 0, shutdownGrace <= 3600 else {
            throw UsageError("--shutdown-grace must be between 0 and 3600 seconds")
        }
        if let config { try checkConfigFile(config) }
        if metricsAddress != nil { _ = try metricsEndpoint() }
        guard deviceWait > 0, deviceWait <= 600 else { throw UsageError("--device-wait must be between 0 and 600 seconds") }
        for (flag, path) in [("--kubelet-dir", kubeletDir), ("--sys-root", sysRoot), ("--dev-root", devRoot)] where !path.hasPrefix("/") {
            throw UsageError("\(flag) must be an absolute path, not \"\(path)\"")
        }
    }

    /// `HOST:PORT`, `:PORT` (every address) or `[v6]:PORT`, as a TCP endpoint.
    func metricsEndpoint() throws -> Endpoint? {
        guard let address = metricsAddress else { return nil }
        let text = address.hasPrefix(":") ? "0.0.0.0" + address : address
        do {
            return try Endpoint(parsing: "tcp://" + text)
        } catch {
            throw UsageError("--metrics-address \"\(address)\": expected HOST:PORT or :PORT")
        }
    }

    func nodeSettings(nodeName: String) -> NodeSettings {
        var settings = NodeSettings(nodeName: nodeName)
        settings.allowedRoots = [kubeletDir]
        settings.sysRoot = sysRoot
        settings.devRoot = devRoot
        settings.deviceWaitSeconds = deviceWait
        // Inside kubelet's directory, which the node plugin's pod mounts: it outlives the plugin.
        settings.stateDirectory = kubeletDir + "/plugins/" + driverName + "/staged-volumes"
        settings.region = region ?? environment("NODE_REGION")
        settings.zone = zone ?? environment("NODE_ZONE")
        settings.kubernetes = KubernetesNodeLabels.inCluster()
        settings.driverName = driverName
        return settings
    }

    func resolvedEndpoint() throws -> Endpoint {
        let text = endpoint ?? environment("CSI_ENDPOINT") ?? "unix:///csi/csi.sock"
        do {
            return try Endpoint(parsing: text)
        } catch {
            throw UsageError("--endpoint: \(error)")
        }
    }

    func checkConfigFile(_ path: String) throws {
        do {
            _ = try DriverConfig.load(path: path)
        } catch {
            throw UsageError("\(error)")
        }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let format = logFormat
        let level = logLevel
        LoggingSystem.bootstrap { label in LineLogHandler(label: label, level: level, format: format) }
        var logger = Logger(label: "proxmox-csi")
        logger[metadataKey: "csi.mode"] = "\(mode.rawValue)"

        let nodeName = nodeID ?? environment("NODE_NAME") ?? hostName()
        // The controller depends on Proxmox: Probe says ready only while its API answers.
        var readiness = Readiness([])
        var services: [any DriverService] = []
        var controller: ControllerService?
        var volumes: ProxmoxVolumes?
        if config == nil, mode.servesController {
            logger.warning("no --config: the Controller service is off until a config names the Proxmox clusters")
        }
        let metrics = metricsAddress == nil ? nil : DriverMetrics(driverName: driverName, mode: mode)
        if let config {
            let loaded = try DriverConfig.load(path: config)
            for warning in loaded.warnings { logger.warning("config", metadata: ["config.warning": "\(warning)"]) }
            let clusters = ProxmoxClusters(config: loaded, metrics: metrics)
            volumes = ProxmoxVolumes(clusters: clusters.ordered, ownerVMID: loaded.ownerVMID, taskTimeout: loaded.taskTimeout)
            if mode.servesController {
                readiness = clusters.readiness
                services.append(ReadinessProber(clusters: clusters))
                controller = ControllerService(volumes: volumes!, config: loaded)
            }
        }
        let driver = Driver(name: driverName, mode: mode, readiness: readiness, controller: controller,
                            node: NodeService(settings: nodeSettings(nodeName: nodeName), volumes: volumes), metrics: metrics)
        services.append(GRPCService(server: try Server(endpoint: resolvedEndpoint(), router: driver.makeRouter(), logger: logger)))
        if let metrics, let endpoint = try metricsEndpoint() {
            do {
                services.append(MetricsService(server: try MetricsServer(endpoint: endpoint, registry: metrics.registry), logger: logger))
            } catch {
                throw RuntimeFailure(description: "--metrics-address: \(error)")
            }
        }
        let group = ServiceGroup(services: services, gracePeriod: shutdownGrace, logger: logger)
        logger.info("serving", metadata: [
            "csi.driver": "\(driverName)", "csi.version": "\(DriverInfo.version)", "csi.node": "\(nodeName)",
        ])
        do {
            _ = try await group.run()
        } catch {
            throw RuntimeFailure(description: "\(error)")
        }
    }
}

/// The CSI gRPC server: stops taking calls, sends GOAWAY, lets in-flight calls finish.
struct GRPCService: DriverService {
    let server: Server
    var name: String { "grpc" }

    func start() throws { _ = try server.start() }

    func stop(gracePeriod: Double) async {
        // shutdown blocks until every connection closes: on a thread of its own, not the cooperative pool.
        let server = server
        await OwnedThread.run { server.shutdown(gracePeriodNanoseconds: UInt64(gracePeriod * 1_000_000_000)) }
    }
}

/// The Prometheus endpoint.
struct MetricsService: DriverService {
    let server: MetricsServer
    let logger: Logger
    var name: String { "metrics" }

    func start() throws {
        server.start()
        logger.info("metrics", metadata: ["metrics.url": "http://\(server.endpoint.description.dropFirst("tcp://".count))/metrics"])
    }

    func stop(gracePeriod: Double) async { server.stop() }
}

/// Asks every cluster for its version now and then, so readiness stays true to the API while idle.
final class ReadinessProber: DriverService {
    private let task = Mutex<Task<Void, Never>?>(nil)
    let clusters: ProxmoxClusters
    var name: String { "readiness" }

    init(clusters: ProxmoxClusters) { self.clusters = clusters }

    func start() throws { task.withLock { $0 = clusters.keepReadinessCurrent() } }

    func stop(gracePeriod: Double) async {
        let running = task.withLock { $0 }
        running?.cancel()
        await running?.value
    }
}

func environment(_ name: String) -> String? {
    guard let value = getenv(name), value.pointee != 0 else { return nil }
    return String(cString: value)
}

func hostName() -> String {
    var buffer = [UInt8](repeating: 0, count: 256)
    gethostname(&buffer, buffer.count)
    return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
}
