import CSIProto
import SwiftProtobuf
import UnaryGRPC

/// Every CSI request type by its method path: a call that arrives complete is
/// decoded as the driver's router would decode it, printed and re-encoded.
let requestTypes: [String: any SwiftProtobuf.Message.Type] = [
    "/csi.v1.Identity/GetPluginInfo": Csi_V1_GetPluginInfoRequest.self,
    "/csi.v1.Identity/GetPluginCapabilities": Csi_V1_GetPluginCapabilitiesRequest.self,
    "/csi.v1.Identity/Probe": Csi_V1_ProbeRequest.self,
    "/csi.v1.Controller/CreateVolume": Csi_V1_CreateVolumeRequest.self,
    "/csi.v1.Controller/DeleteVolume": Csi_V1_DeleteVolumeRequest.self,
    "/csi.v1.Controller/ControllerPublishVolume": Csi_V1_ControllerPublishVolumeRequest.self,
    "/csi.v1.Controller/ControllerUnpublishVolume": Csi_V1_ControllerUnpublishVolumeRequest.self,
    "/csi.v1.Controller/ValidateVolumeCapabilities": Csi_V1_ValidateVolumeCapabilitiesRequest.self,
    "/csi.v1.Controller/ListVolumes": Csi_V1_ListVolumesRequest.self,
    "/csi.v1.Controller/GetCapacity": Csi_V1_GetCapacityRequest.self,
    "/csi.v1.Controller/ControllerGetCapabilities": Csi_V1_ControllerGetCapabilitiesRequest.self,
    "/csi.v1.Controller/CreateSnapshot": Csi_V1_CreateSnapshotRequest.self,
    "/csi.v1.Controller/DeleteSnapshot": Csi_V1_DeleteSnapshotRequest.self,
    "/csi.v1.Controller/ListSnapshots": Csi_V1_ListSnapshotsRequest.self,
    "/csi.v1.Controller/ControllerExpandVolume": Csi_V1_ControllerExpandVolumeRequest.self,
    "/csi.v1.Controller/ControllerGetVolume": Csi_V1_ControllerGetVolumeRequest.self,
    "/csi.v1.Controller/ControllerModifyVolume": Csi_V1_ControllerModifyVolumeRequest.self,
    "/csi.v1.Node/NodeStageVolume": Csi_V1_NodeStageVolumeRequest.self,
    "/csi.v1.Node/NodeUnstageVolume": Csi_V1_NodeUnstageVolumeRequest.self,
    "/csi.v1.Node/NodePublishVolume": Csi_V1_NodePublishVolumeRequest.self,
    "/csi.v1.Node/NodeUnpublishVolume": Csi_V1_NodeUnpublishVolumeRequest.self,
    "/csi.v1.Node/NodeGetVolumeStats": Csi_V1_NodeGetVolumeStatsRequest.self,
    "/csi.v1.Node/NodeExpandVolume": Csi_V1_NodeExpandVolumeRequest.self,
    "/csi.v1.Node/NodeGetCapabilities": Csi_V1_NodeGetCapabilitiesRequest.self,
    "/csi.v1.Node/NodeGetInfo": Csi_V1_NodeGetInfoRequest.self,
]

func answer(_ path: String, _ message: [UInt8]) -> Result<[UInt8], RPCError> {
    guard let type = requestTypes[path] else { return .failure(RPCError(.unimplemented, "unknown method \(path)")) }
    do {
        let decoded = try type.init(serializedBytes: message)
        _ = decoded.textFormatString()
        return .success(try decoded.serializedBytes())
    } catch {
        return .failure(RPCError(.internal, "grpc: error unmarshalling request: \(error)"))
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    WireFuzzing.exchange(UnsafeRawBufferPointer(start: data, count: size), handle: answer)
    return 0
}

// SwiftPM names an executable's entry point after the target and points `main`
// at it; libFuzzer brings the real driver, which this hands control to.
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

@_cdecl("FuzzWire_main")
public func fuzzWireMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzzOneInput(data, size) }
}
