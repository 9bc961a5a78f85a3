import CSIProto
import UnaryGRPC

/// Assembles the services a mode serves into one router.
public struct Driver: Sendable {
    public let name: String
    public let mode: DriverMode
    public let readiness: Readiness

    public init(name: String, mode: DriverMode, readiness: Readiness = Readiness([])) {
        self.name = name
        self.mode = mode
        self.readiness = readiness
    }

    /// Plugin capabilities advertised in this mode: only what is served.
    /// The controller and node services are not built yet, so there are none.
    public var pluginCapabilities: [Csi_V1_PluginCapability] { [] }

    public func makeRouter() -> Router {
        var router = Router()
        IdentityService(driverName: name, mode: mode, capabilities: pluginCapabilities, readiness: readiness)
            .register(into: &router)
        return router
    }
}
