import CSIProto
import Logging
import SwiftProtobuf
import UnaryGRPC

/// The CSI Identity service: who the plugin is, what it offers, whether it is ready.
public struct IdentityService: Sendable {
    public let driverName: String
    public let mode: DriverMode
    public let capabilities: [Csi_V1_PluginCapability]
    public let readiness: Readiness

    /// `capabilities` lists only what this build really serves; the services
    /// add theirs as they land.
    public init(driverName: String, mode: DriverMode, capabilities: [Csi_V1_PluginCapability], readiness: Readiness) {
        self.driverName = driverName
        self.mode = mode
        self.capabilities = capabilities
        self.readiness = readiness
    }

    public func getPluginInfo(_: Csi_V1_GetPluginInfoRequest, _: CallContext) -> Csi_V1_GetPluginInfoResponse {
        .with {
            $0.name = driverName
            $0.vendorVersion = DriverInfo.version
            $0.manifest = ["mode": mode.rawValue]
        }
    }

    public func getPluginCapabilities(_: Csi_V1_GetPluginCapabilitiesRequest, _: CallContext) -> Csi_V1_GetPluginCapabilitiesResponse {
        .with { $0.capabilities = capabilities }
    }

    public func probe(_: Csi_V1_ProbeRequest, _ context: CallContext) -> Csi_V1_ProbeResponse {
        let reasons = readiness.unreadyReasons()
        if !reasons.isEmpty {
            context.logger.warning("not ready", metadata: ["csi.unready": "\(reasons.joined(separator: "; "))"])
        }
        return .with { $0.ready = Google_Protobuf_BoolValue(reasons.isEmpty) }
    }

    public func register(into router: inout Router) {
        // All three answer from memory: run inline on the connection's event loop.
        router.registerImmediate("/csi.v1.Identity/GetPluginInfo") { request, context in getPluginInfo(request, context) }
        router.registerImmediate("/csi.v1.Identity/GetPluginCapabilities") { request, context in getPluginCapabilities(request, context) }
        router.registerImmediate("/csi.v1.Identity/Probe") { request, context in probe(request, context) }
    }
}
