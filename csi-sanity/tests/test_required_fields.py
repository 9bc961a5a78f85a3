"""Every RPC, each required field missing: INVALID_ARGUMENT naming the field
(checked before anything else happens). Optional fields left out are not errors."""
import os

import grpc
import pytest

import csi_pb2
import csi_pb2_grpc

pytestmark = pytest.mark.skipif(not os.environ.get("SIM_URL"), reason="needs csi-sanity/run's driver with a config")

VOLUME = "sim//ceph/vm-9999-pvc-required"
CAP = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
                               access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))
RANGE = csi_pb2.CapacityRange(required_bytes=1 << 30)
KUBELET = os.environ.get("KUBELET_DIR", "/var/lib/kubelet")

# (service, method, a complete request, its required fields)
CASES = [
    ("Controller", "CreateVolume", csi_pb2.CreateVolumeRequest(name="pvc-x", volume_capabilities=[CAP]),
     ["name", "volume_capabilities"]),
    ("Controller", "DeleteVolume", csi_pb2.DeleteVolumeRequest(volume_id=VOLUME), ["volume_id"]),
    ("Controller", "ControllerPublishVolume", csi_pb2.ControllerPublishVolumeRequest(
        volume_id=VOLUME, node_id="k8s-node-1", volume_capability=CAP), ["volume_id", "node_id", "volume_capability"]),
    ("Controller", "ControllerUnpublishVolume", csi_pb2.ControllerUnpublishVolumeRequest(volume_id=VOLUME), ["volume_id"]),
    ("Controller", "ValidateVolumeCapabilities", csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=VOLUME, volume_capabilities=[CAP]), ["volume_id", "volume_capabilities"]),
    ("Controller", "ControllerExpandVolume", csi_pb2.ControllerExpandVolumeRequest(volume_id=VOLUME, capacity_range=RANGE),
     ["volume_id", "capacity_range"]),
    ("Controller", "ControllerGetVolume", csi_pb2.ControllerGetVolumeRequest(volume_id=VOLUME), ["volume_id"]),
    ("Controller", "ControllerModifyVolume", csi_pb2.ControllerModifyVolumeRequest(
        volume_id=VOLUME, mutable_parameters={"diskIOPS": "100"}), ["volume_id", "mutable_parameters"]),
    ("Controller", "CreateSnapshot", csi_pb2.CreateSnapshotRequest(name="snap-x", source_volume_id=VOLUME),
     ["name", "source_volume_id"]),
    ("Controller", "DeleteSnapshot", csi_pb2.DeleteSnapshotRequest(snapshot_id="sim/999/csi-snap-x"), ["snapshot_id"]),
    ("Node", "NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        volume_id=VOLUME, staging_target_path=f"{KUBELET}/s", volume_capability=CAP),
     ["volume_id", "staging_target_path", "volume_capability"]),
    ("Node", "NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(volume_id=VOLUME, staging_target_path=f"{KUBELET}/s"),
     ["volume_id", "staging_target_path"]),
    ("Node", "NodePublishVolume", csi_pb2.NodePublishVolumeRequest(
        volume_id=VOLUME, staging_target_path=f"{KUBELET}/s", target_path=f"{KUBELET}/t", volume_capability=CAP),
     ["volume_id", "target_path", "volume_capability", "staging_target_path"]),
    ("Node", "NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(volume_id=VOLUME, target_path=f"{KUBELET}/t"),
     ["volume_id", "target_path"]),
    ("Node", "NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(volume_id=VOLUME, volume_path=f"{KUBELET}/t"),
     ["volume_id", "volume_path"]),
    ("Node", "NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(volume_id=VOLUME, volume_path=f"{KUBELET}/t"),
     ["volume_id", "volume_path"]),
]


@pytest.mark.parametrize("service, method, complete, field",
                         [(s, m, c, f) for s, m, c, fields in CASES for f in fields],
                         ids=[f"{m}-{f}" for _, m, _, fields in CASES for f in fields])
def test_a_missing_required_field_is_invalid_argument_naming_it(channel, service, method, complete, field):
    stub = getattr(csi_pb2_grpc, f"{service}Stub")(channel)
    request = type(complete)()
    request.CopyFrom(complete)
    request.ClearField(field)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert field in caught.value.details()


def test_unpublish_without_a_node_detaches_from_every_node(channel):
    controller = csi_pb2_grpc.ControllerStub(channel)
    volume = controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name="pvc-unpublish-everywhere", capacity_range=RANGE, volume_capabilities=[CAP], parameters={"storage": "ceph"}),
        timeout=60).volume
    controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id="k8s-node-2", volume_capability=CAP), timeout=60)
    # node_id is optional: left out, the volume is detached wherever it is.
    controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id), timeout=60)
    got = controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id), timeout=30)
    assert list(got.status.published_node_ids) == []
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)
