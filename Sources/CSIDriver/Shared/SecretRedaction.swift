import CSIProto
import SwiftProtobuf
import UnaryGRPC

/// A CSI request with a `secrets` map (a field the spec marks `csi_secret`).
/// Conforming makes the call log print it with every secret value replaced.
public protocol CarriesSecrets: LogRedactable, SwiftProtobuf.Message {
    var secrets: [String: String] { get set }
}

extension CarriesSecrets {
    public func redactedForLog() -> Self {
        var copy = self
        copy.secrets = copy.secrets.mapValues { _ in "<redacted>" }
        return copy
    }
}

/// Every request type the spec gives a secret field. A test compares this
/// list with the `csi_secret` fields of proto/csi.proto, so a new one cannot
/// be forgotten.
public let requestsCarryingSecrets: [any CarriesSecrets.Type] = [
    Csi_V1_CreateVolumeRequest.self,
    Csi_V1_DeleteVolumeRequest.self,
    Csi_V1_ControllerPublishVolumeRequest.self,
    Csi_V1_ControllerUnpublishVolumeRequest.self,
    Csi_V1_ValidateVolumeCapabilitiesRequest.self,
    Csi_V1_ControllerModifyVolumeRequest.self,
    Csi_V1_CreateSnapshotRequest.self,
    Csi_V1_DeleteSnapshotRequest.self,
    Csi_V1_ListSnapshotsRequest.self,
    Csi_V1_GetSnapshotRequest.self,
    Csi_V1_ControllerExpandVolumeRequest.self,
    Csi_V1_NodeStageVolumeRequest.self,
    Csi_V1_NodePublishVolumeRequest.self,
    Csi_V1_NodeExpandVolumeRequest.self,
    Csi_V1_CreateVolumeGroupSnapshotRequest.self,
    Csi_V1_DeleteVolumeGroupSnapshotRequest.self,
    Csi_V1_GetVolumeGroupSnapshotRequest.self,
    Csi_V1_GetMetadataAllocatedRequest.self,
    Csi_V1_GetMetadataDeltaRequest.self,
]

extension Csi_V1_CreateVolumeRequest: CarriesSecrets {}
extension Csi_V1_DeleteVolumeRequest: CarriesSecrets {}
extension Csi_V1_ControllerPublishVolumeRequest: CarriesSecrets {}
extension Csi_V1_ControllerUnpublishVolumeRequest: CarriesSecrets {}
extension Csi_V1_ValidateVolumeCapabilitiesRequest: CarriesSecrets {}
extension Csi_V1_ControllerModifyVolumeRequest: CarriesSecrets {}
extension Csi_V1_CreateSnapshotRequest: CarriesSecrets {}
extension Csi_V1_DeleteSnapshotRequest: CarriesSecrets {}
extension Csi_V1_ListSnapshotsRequest: CarriesSecrets {}
extension Csi_V1_GetSnapshotRequest: CarriesSecrets {}
extension Csi_V1_ControllerExpandVolumeRequest: CarriesSecrets {}
extension Csi_V1_NodeStageVolumeRequest: CarriesSecrets {}
extension Csi_V1_NodePublishVolumeRequest: CarriesSecrets {}
extension Csi_V1_NodeExpandVolumeRequest: CarriesSecrets {}
extension Csi_V1_CreateVolumeGroupSnapshotRequest: CarriesSecrets {}
extension Csi_V1_DeleteVolumeGroupSnapshotRequest: CarriesSecrets {}
extension Csi_V1_GetVolumeGroupSnapshotRequest: CarriesSecrets {}
extension Csi_V1_GetMetadataAllocatedRequest: CarriesSecrets {}
extension Csi_V1_GetMetadataDeltaRequest: CarriesSecrets {}
