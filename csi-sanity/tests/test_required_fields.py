"""Every RPC, each required field missing or holding what cannot be valid:
INVALID_ARGUMENT naming the field (checked before anything else happens).
Optional fields left out are not errors."""
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


def with_fields(message, **fields):
    changed = type(message)()
    changed.CopyFrom(message)
    for name, value in fields.items():
        field = getattr(changed, name)
        if hasattr(field, "CopyFrom") and not isinstance(value, (list, dict)):
            field.CopyFrom(value)
        elif isinstance(value, list):
            del field[:]
            field.extend(value)
        elif isinstance(value, dict):
            field.clear()
            field.update(value)
        else:
            setattr(changed, name, value)
    return changed


NO_ACCESS_TYPE = csi_pb2.VolumeCapability(access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))
NO_ACCESS_MODE = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"))
OTHER_FS = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="btrfs"),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))
CREATE = csi_pb2.CreateVolumeRequest(name="pvc-x", volume_capabilities=[CAP], parameters={"storage": "ceph"})
PUBLISH = csi_pb2.ControllerPublishVolumeRequest(volume_id=VOLUME, node_id="k8s-node-1", volume_capability=CAP)
EXPAND = csi_pb2.ControllerExpandVolumeRequest(volume_id=VOLUME, capacity_range=RANGE)
STAGE = csi_pb2.NodeStageVolumeRequest(volume_id=VOLUME, staging_target_path=f"{KUBELET}/s", volume_capability=CAP)
NODE_PUBLISH = csi_pb2.NodePublishVolumeRequest(volume_id=VOLUME, staging_target_path=f"{KUBELET}/s",
                                                target_path=f"{KUBELET}/t", volume_capability=CAP)

# (service, method, request with one field made invalid, the words the answer must name)
INVALID = [
    ("Controller", "CreateVolume", with_fields(CREATE, capacity_range=csi_pb2.CapacityRange(required_bytes=-1)), "required_bytes"),
    ("Controller", "CreateVolume", with_fields(CREATE, capacity_range=csi_pb2.CapacityRange(limit_bytes=-1)), "limit_bytes"),
    ("Controller", "CreateVolume", with_fields(CREATE, volume_capabilities=[NO_ACCESS_TYPE]), "volume_capabilities"),
    ("Controller", "CreateVolume", with_fields(CREATE, volume_capabilities=[NO_ACCESS_MODE]), "access_mode"),
    ("Controller", "CreateVolume", with_fields(CREATE, volume_capabilities=[OTHER_FS]), "fs_type"),
    ("Controller", "CreateVolume", with_fields(CREATE, parameters={"storage": "ceph", "blockSize": "many"}), "blockSize"),
    ("Controller", "ControllerPublishVolume", with_fields(PUBLISH, volume_capability=NO_ACCESS_TYPE), "volume_capability"),
    ("Controller", "ControllerPublishVolume", with_fields(PUBLISH, volume_capability=NO_ACCESS_MODE), "access_mode"),
    ("Controller", "ControllerPublishVolume", with_fields(PUBLISH, volume_capability=OTHER_FS), "fs_type"),
    ("Controller", "ValidateVolumeCapabilities", csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=VOLUME, volume_capabilities=[NO_ACCESS_TYPE]), "volume_capabilities"),
    ("Controller", "ControllerExpandVolume", with_fields(EXPAND, capacity_range=csi_pb2.CapacityRange(required_bytes=-5)),
     "required_bytes"),
    ("Controller", "ControllerExpandVolume", with_fields(EXPAND, capacity_range=csi_pb2.CapacityRange(
        required_bytes=2 << 30, limit_bytes=1 << 30)), "limit_bytes"),
    ("Controller", "ListVolumes", csi_pb2.ListVolumesRequest(max_entries=-1), "max_entries"),
    ("Controller", "ListSnapshots", csi_pb2.ListSnapshotsRequest(max_entries=-1), "max_entries"),
    ("Controller", "GetCapacity", csi_pb2.GetCapacityRequest(parameters={"storage": "ceph", "colour": "red"}), "colour"),
    ("Controller", "GetCapacity", csi_pb2.GetCapacityRequest(volume_capabilities=[NO_ACCESS_TYPE],
                                                             parameters={"storage": "ceph"}), "volume_capabilities"),
    ("Controller", "CreateSnapshot", csi_pb2.CreateSnapshotRequest(name="snap-x", source_volume_id=VOLUME,
                                                                   parameters={"colour": "red"}), "colour"),
    ("Node", "NodeStageVolume", with_fields(STAGE, staging_target_path="relative/s"), "staging_target_path"),
    ("Node", "NodeStageVolume", with_fields(STAGE, staging_target_path=f"{KUBELET}/a/../../s"), "staging_target_path"),
    ("Node", "NodeStageVolume", with_fields(STAGE, staging_target_path="/etc/s"), "staging_target_path"),
    ("Node", "NodeStageVolume", with_fields(STAGE, volume_capability=NO_ACCESS_TYPE), "volume_capability"),
    ("Node", "NodeStageVolume", with_fields(STAGE, volume_capability=NO_ACCESS_MODE), "access_mode"),
    ("Node", "NodeStageVolume", with_fields(STAGE, volume_capability=OTHER_FS), "fs_type"),
    ("Node", "NodeStageVolume", with_fields(STAGE, volume_context={"blockSize": "many"}), "blockSize"),
    ("Node", "NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(volume_id=VOLUME, staging_target_path="relative/s"),
     "staging_target_path"),
    ("Node", "NodePublishVolume", with_fields(NODE_PUBLISH, target_path="relative/t"), "target_path"),
    ("Node", "NodePublishVolume", with_fields(NODE_PUBLISH, staging_target_path=f"{KUBELET}/../s"), "staging_target_path"),
    ("Node", "NodePublishVolume", with_fields(NODE_PUBLISH, volume_capability=OTHER_FS), "fs_type"),
    ("Node", "NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(volume_id=VOLUME, target_path=f"{KUBELET}/../t"),
     "target_path"),
    ("Node", "NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(volume_id=VOLUME, volume_path=f"{KUBELET}/t",
                                                                 capacity_range=csi_pb2.CapacityRange(required_bytes=-1)),
     "required_bytes"),
]


@pytest.mark.parametrize("service, method, request_, words", INVALID,
                         ids=[f"{m}-{w}-{i}" for i, (_, m, _, w) in enumerate(INVALID)])
def test_an_invalid_field_is_invalid_argument_naming_it(channel, service, method, request_, words):
    stub = getattr(csi_pb2_grpc, f"{service}Stub")(channel)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert words in caught.value.details()


@pytest.mark.parametrize("method, request_", [
    ("NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(volume_id=VOLUME, volume_path="relative/t")),
    ("NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(volume_id=VOLUME, volume_path="relative/t")),
])
def test_a_volume_path_where_no_volume_can_be_is_not_found(channel, method, request_):
    # csi-sanity's "volume is not found" specs send a relative path and want
    # NOT_FOUND: no volume is there. The answer still names the field.
    with pytest.raises(grpc.RpcError) as caught:
        getattr(csi_pb2_grpc.NodeStub(channel), method)(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
    assert "volume_path" in caught.value.details()


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
