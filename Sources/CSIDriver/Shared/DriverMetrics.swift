import Metrics
import ProxmoxAPI
import UnaryGRPC

/// What the driver counts: every CSI call and every Proxmox API request.
public final class DriverMetrics: CallObserver {
    public let registry = MetricsRegistry()
    let rpcCalls: CounterFamily
    let rpcSeconds: HistogramFamily
    let proxmoxRequests: CounterFamily
    let proxmoxSeconds: HistogramFamily
    let proxmoxErrors: CounterFamily

    public init(driverName: String, mode: DriverMode) {
        _ = registry.register(InfoFamily("proxmox_csi_build_info", help: "The driver's version, name and mode.",
                                         labels: [("version", DriverInfo.version), ("driver", driverName), ("mode", "\(mode)")]))
        rpcCalls = registry.register(CounterFamily(
            "proxmox_csi_rpc_requests_total", help: "CSI calls finished, by method and gRPC status code.", labels: ["method", "code"]))
        rpcSeconds = registry.register(HistogramFamily(
            "proxmox_csi_rpc_duration_seconds", help: "How long CSI calls took, by method.", labels: ["method"]))
        proxmoxRequests = registry.register(CounterFamily(
            "proxmox_csi_proxmox_requests_total", help: "Proxmox API requests, by cluster, HTTP method, path and status (none: no answer).",
            labels: ["cluster", "method", "path", "status"]))
        proxmoxSeconds = registry.register(HistogramFamily(
            "proxmox_csi_proxmox_request_duration_seconds", help: "How long Proxmox API requests took.",
            labels: ["cluster", "method", "path"]))
        proxmoxErrors = registry.register(CounterFamily(
            "proxmox_csi_proxmox_errors_total", help: "Proxmox API requests that failed, by cluster and kind of error.",
            labels: ["cluster", "kind"]))
    }

    public func callFinished(method: String, code: StatusCode, seconds: Double) {
        rpcCalls.increment([method, "\(code)"])
        rpcSeconds.observe([method], seconds)
    }

    /// The observer one cluster's client reports to.
    public func proxmoxObserver(cluster: String) -> any ProxmoxRequestObserver {
        ClusterObserver(cluster: cluster, metrics: self)
    }

    struct ClusterObserver: ProxmoxRequestObserver {
        let cluster: String
        let metrics: DriverMetrics

        func requestFinished(method: String, path: String, status: Int?, error: ProxmoxError?, seconds: Double) {
            metrics.proxmoxRequests.increment([cluster, method, path, status.map(String.init) ?? "none"])
            metrics.proxmoxSeconds.observe([cluster, method, path], seconds)
            if let error { metrics.proxmoxErrors.increment([cluster, error.kind]) }
        }
    }
}

extension ProxmoxError {
    /// A short, stable name for each kind of failure (a metrics label).
    public var kind: String {
        switch self {
        case .authenticationFailed: "authentication"
        case .permissionDenied: "permission"
        case .invalidParameters: "invalid_parameters"
        case .badRequest: "bad_request"
        case .notFound: "not_found"
        case .vmLocked: "vm_locked"
        case .digestConflict: "digest_conflict"
        case .configLockTimeout: "config_lock_timeout"
        case .proxy: "proxy"
        case .server: "server"
        case .transport: "transport"
        case .taskFailed: "task_failed"
        case .taskTimedOut: "task_timed_out"
        case .malformedResponse: "malformed_response"
        }
    }
}
