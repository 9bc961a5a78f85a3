import CSIProto
import ProxmoxDomain
import UnaryGRPC

/// Assembles the services a mode serves into one router.
public struct Driver: Sendable {
    public let name: String
    public let mode: DriverMode
    public let readiness: Readiness
    /// Served when the mode includes it and a config names Proxmox clusters.
    public let controller: ControllerService?
    public let node: NodeService?
    /// Counts every call when given.
    public let metrics: DriverMetrics?

    public init(name: String, mode: DriverMode, readiness: Readiness = Readiness([]), controller: ControllerService? = nil,
                node: NodeService? = nil, metrics: DriverMetrics? = nil) {
        self.metrics = metrics
        self.name = name
        self.mode = mode
        self.readiness = readiness
        self.controller = mode.servesController ? controller : nil
        self.node = mode.servesNode ? node : nil
    }

    /// Plugin capabilities advertised in this mode: only what is served.
    public var pluginCapabilities: [Csi_V1_PluginCapability] {
        guard controller != nil else { return [] }
        return [
            .with { $0.service.type = .controllerService },
            .with { $0.service.type = .volumeAccessibilityConstraints },
            // Attached volumes grow through their VM, detached ones through a holder VM.
            .with { $0.volumeExpansion.type = .online },
        ]
    }

    public func makeRouter() -> Router {
        var router = Router(observer: metrics)
        IdentityService(driverName: name, mode: mode, capabilities: pluginCapabilities, readiness: readiness)
            .register(into: &router)
        controller?.register(into: &router)
        node?.register(into: &router)
        return router
    }
}
