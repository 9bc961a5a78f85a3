"""The Controller service against the Proxmox simulator (needs the runner's
driver, started with a config: CSI_CONFIG and SIM_URL are set by csi-sanity/run)."""
import json
import os
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

import csi_pb2
import csi_pb2_grpc

pytestmark = pytest.mark.skipif(not os.environ.get("SIM_URL"), reason="needs csi-sanity/run's simulator and driver")
GiB = 1 << 30


@pytest.fixture
def controller(channel):
    return csi_pb2_grpc.ControllerStub(channel)


def mount_capability(mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER, fs="xfs"):
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))


def create_request(name=None, size=GiB, storage="ceph", **overrides):
    request = dict(name=f"pvc-{uuid.uuid4()}" if name is None else name, capacity_range=csi_pb2.CapacityRange(required_bytes=size),
                   volume_capabilities=[mount_capability()], parameters={"storage": storage})
    request.update(overrides)
    return csi_pb2.CreateVolumeRequest(**request)


def code_of(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=30, **kwargs)
    return caught.value.code(), caught.value.details()


def simulator_log():
    with urllib.request.urlopen(os.environ["SIM_URL"] + "/_sim/log") as response:
        return json.loads(response.read())["data"]


def test_capabilities_list_what_is_served(controller):
    caps = {c.rpc.type for c in controller.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest(), timeout=5).capabilities}
    RPC = csi_pb2.ControllerServiceCapability.RPC
    assert {RPC.CREATE_DELETE_VOLUME, RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.LIST_VOLUMES, RPC.GET_CAPACITY} <= caps
    assert {RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.CLONE_VOLUME, RPC.EXPAND_VOLUME, RPC.GET_VOLUME} <= caps
    assert RPC.MODIFY_VOLUME in caps


@pytest.mark.parametrize("overrides, code, words", [
    (dict(name=""), grpc.StatusCode.INVALID_ARGUMENT, "name is required"),
    (dict(volume_capabilities=[]), grpc.StatusCode.INVALID_ARGUMENT, "volume_capabilities is required"),
    (dict(volume_capabilities=[mount_capability(csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER)]),
     grpc.StatusCode.INVALID_ARGUMENT, "access mode"),
    (dict(volume_capabilities=[mount_capability(fs="btrfs")]), grpc.StatusCode.INVALID_ARGUMENT, "fs_type"),
    (dict(parameters={"storage": "ceph", "colour": "red"}), grpc.StatusCode.INVALID_ARGUMENT, "\"colour\""),
    (dict(parameters={}), grpc.StatusCode.INVALID_ARGUMENT, "must name a Proxmox storage"),
    (dict(parameters={"storage": "nosuch"}), grpc.StatusCode.INVALID_ARGUMENT, "no storage \"nosuch\""),
    (dict(capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB, limit_bytes=GiB)),
     grpc.StatusCode.INVALID_ARGUMENT, "exceeds limit_bytes"),
])
def test_create_refuses_bad_requests_naming_the_field(controller, overrides, code, words):
    got, details = code_of(controller.CreateVolume, create_request(**overrides))
    assert got == code and words in details, details


def test_create_is_idempotent_by_name_and_refuses_an_incompatible_size(controller):
    request = create_request(size=2 * GiB)
    first = controller.CreateVolume(request, timeout=30).volume
    again = controller.CreateVolume(request, timeout=30).volume
    assert first.volume_id == again.volume_id and first.capacity_bytes == 2 * GiB
    got, _ = code_of(controller.CreateVolume, create_request(name=request.name, size=5 * GiB))
    assert got == grpc.StatusCode.ALREADY_EXISTS
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=first.volume_id), timeout=30)


def test_sizes_round_up_to_the_allocation_unit(controller):
    volume = controller.CreateVolume(create_request(size=GiB + 1), timeout=30).volume
    assert volume.capacity_bytes == GiB + 4 * (1 << 20)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def test_local_storage_volume_carries_its_node_in_id_and_topology(controller):
    request = create_request(storage="local-lvm", accessibility_requirements=csi_pb2.TopologyRequirement(
        preferred=[csi_pb2.Topology(segments={"topology.kubernetes.io/zone": "pve2"})]))
    volume = controller.CreateVolume(request, timeout=30).volume
    assert volume.volume_id.startswith("sim/pve2/local-lvm/vm-9999-pvc-")
    assert dict(volume.accessible_topology[0].segments) == {
        "topology.kubernetes.io/region": "sim", "topology.kubernetes.io/zone": "pve2"}
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def test_publish_unpublish_and_delete_rules(controller):
    volume = controller.CreateVolume(create_request(parameters={"storage": "ceph", "ssd": "true"}), timeout=30).volume
    publish = csi_pb2.ControllerPublishVolumeRequest(volume_id=volume.volume_id, node_id="k8s-node-1",
                                                     volume_capability=mount_capability(),
                                                     volume_context=volume.volume_context)
    context = controller.ControllerPublishVolume(publish, timeout=30).publish_context
    assert context["serial"].startswith("csi-") and len(context["serial"]) == 20
    assert context["bus"] == "scsi" and context["wwn"].startswith("0x5")
    # Publishing again is a no-op with the same answer.
    assert controller.ControllerPublishVolume(publish, timeout=30).publish_context == context
    # Elsewhere, or read-only where it is read-write: refused.
    other = csi_pb2.ControllerPublishVolumeRequest(volume_id=volume.volume_id, node_id="k8s-node-2",
                                                   volume_capability=mount_capability())
    assert code_of(controller.ControllerPublishVolume, other)[0] == grpc.StatusCode.FAILED_PRECONDITION
    readonly = csi_pb2.ControllerPublishVolumeRequest(volume_id=volume.volume_id, node_id="k8s-node-1",
                                                      volume_capability=mount_capability(), readonly=True)
    assert code_of(controller.ControllerPublishVolume, readonly)[0] == grpc.StatusCode.ALREADY_EXISTS
    # Attached volumes are not deleted.
    got, details = code_of(controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "k8s-node-1" in details
    listed = controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30).entries
    assert [e.status.published_node_ids for e in listed if e.volume.volume_id == volume.volume_id] == [["k8s-node-1"]]

    unpublish = csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id, node_id="k8s-node-1")
    controller.ControllerUnpublishVolume(unpublish, timeout=30)
    controller.ControllerUnpublishVolume(unpublish, timeout=30)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


@pytest.mark.parametrize("volume_id, node_id, code", [
    ("sim//ceph/vm-9999-nosuch", "k8s-node-1", grpc.StatusCode.NOT_FOUND),
    ("not-a-handle", "k8s-node-1", grpc.StatusCode.NOT_FOUND),
    (None, "no-such-node", grpc.StatusCode.NOT_FOUND),
    ("", "k8s-node-1", grpc.StatusCode.INVALID_ARGUMENT),
    (None, "", grpc.StatusCode.INVALID_ARGUMENT),
])
def test_publish_of_missing_things(controller, volume_id, node_id, code):
    created = None
    if volume_id is None:
        created = controller.CreateVolume(create_request(), timeout=30).volume
        volume_id = created.volume_id
    request = csi_pb2.ControllerPublishVolumeRequest(volume_id=volume_id, node_id=node_id, volume_capability=mount_capability())
    assert code_of(controller.ControllerPublishVolume, request)[0] == code
    if created:
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=created.volume_id), timeout=30)


def test_list_volumes_paginates_and_refuses_foreign_tokens(controller):
    made = [controller.CreateVolume(create_request(), timeout=30).volume.volume_id for _ in range(3)]
    seen, token = [], ""
    while True:
        page = controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=2, starting_token=token), timeout=30)
        assert len(page.entries) <= 2
        seen += [e.volume.volume_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert set(made) <= set(seen) and len(seen) == len(set(seen))
    assert code_of(controller.ListVolumes, csi_pb2.ListVolumesRequest(starting_token="bogus"))[0] == grpc.StatusCode.ABORTED
    for volume_id in made:
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=30)


def test_capacity_of_a_storage_and_a_zone(controller):
    shared = controller.GetCapacity(csi_pb2.GetCapacityRequest(parameters={"storage": "ceph"}), timeout=30)
    assert 0 < shared.available_capacity <= 2048 * GiB
    zone = controller.GetCapacity(csi_pb2.GetCapacityRequest(
        parameters={"storage": "vg0"}, accessible_topology=csi_pb2.Topology(segments={"topology.kubernetes.io/zone": "pve2"})), timeout=30)
    assert zone.available_capacity == 0, "vg0 exists only on pve1"


def test_validate_volume_capabilities(controller):
    volume = controller.CreateVolume(create_request(), timeout=30).volume
    ok = controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id, volume_capabilities=[mount_capability()]), timeout=30)
    assert ok.HasField("confirmed")
    no = controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id, volume_capabilities=[mount_capability(csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER)]), timeout=30)
    assert not no.HasField("confirmed") and "access mode" in no.message
    missing = csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id="sim//ceph/vm-9999-gone", volume_capabilities=[mount_capability()])
    assert code_of(controller.ValidateVolumeCapabilities, missing)[0] == grpc.StatusCode.NOT_FOUND
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def simulator_state():
    with urllib.request.urlopen(os.environ["SIM_URL"] + "/_sim/state") as response:
        return json.loads(response.read())["data"]


def expand(controller, volume_id, size, block=False):
    capability = csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                          access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1)) if block else mount_capability()
    return controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=size), volume_capability=capability), timeout=30)


def test_expand_detached_volume_through_a_holder_vm(controller):
    volume = controller.CreateVolume(create_request(size=GiB), timeout=30).volume
    grown = expand(controller, volume.volume_id, 3 * GiB)
    assert grown.capacity_bytes == 3 * GiB and grown.node_expansion_required
    listed = {e.volume.volume_id: e.volume.capacity_bytes for e in controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30).entries}
    assert listed[volume.volume_id] == 3 * GiB
    holders = [vm for vm in simulator_state()["vms"].values() if vm["config"]["name"].startswith("proxmox-csi-holder-")]
    assert holders and all(vm["status"] == "stopped" for vm in holders)
    assert not any("vm-9999" in value for vm in holders for value in vm["config"].values()), "the holder keeps no volume"
    # Asking again for the same or a smaller size changes nothing.
    assert expand(controller, volume.volume_id, 2 * GiB).capacity_bytes == 3 * GiB
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def test_expand_attached_volume_through_its_vm(controller):
    volume = controller.CreateVolume(create_request(size=GiB), timeout=30).volume
    controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id="k8s-node-2", volume_capability=mount_capability()), timeout=30)
    grown = expand(controller, volume.volume_id, 2 * GiB, block=True)
    assert grown.capacity_bytes == 2 * GiB and not grown.node_expansion_required
    config = simulator_state()["vms"]["101"]["config"]
    name = volume.volume_id.rsplit("/", 1)[1]
    assert [v for v in config.values() if name in v][0].endswith("size=2G")
    controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id, node_id="k8s-node-2"), timeout=30)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def test_expand_refuses_what_cannot_be(controller):
    missing = csi_pb2.ControllerExpandVolumeRequest(volume_id="sim//ceph/vm-9999-gone", capacity_range=csi_pb2.CapacityRange(required_bytes=GiB))
    assert code_of(controller.ControllerExpandVolume, missing)[0] == grpc.StatusCode.NOT_FOUND
    no_range = csi_pb2.ControllerExpandVolumeRequest(volume_id="sim//ceph/vm-9999-gone")
    assert code_of(controller.ControllerExpandVolume, no_range)[0] == grpc.StatusCode.INVALID_ARGUMENT
    volume = controller.CreateVolume(create_request(storage="vg0", size=GiB), timeout=30).volume
    too_big = csi_pb2.ControllerExpandVolumeRequest(volume_id=volume.volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=10000 * GiB))
    assert code_of(controller.ControllerExpandVolume, too_big)[0] == grpc.StatusCode.OUT_OF_RANGE
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def test_get_volume_reports_publication_and_condition(controller):
    volume = controller.CreateVolume(create_request(), timeout=30).volume
    got = controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id), timeout=30)
    assert got.volume.capacity_bytes == GiB and list(got.status.published_node_ids) == []
    assert not got.status.volume_condition.abnormal
    controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id="k8s-node-3", volume_capability=mount_capability()), timeout=30)
    got = controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id), timeout=30)
    assert list(got.status.published_node_ids) == ["k8s-node-3"]
    assert "attached to VM 102" in got.status.volume_condition.message
    controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id, node_id="k8s-node-3"), timeout=30)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)
    gone = csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id)
    assert code_of(controller.ControllerGetVolume, gone)[0] == grpc.StatusCode.NOT_FOUND


def snapshot_request(name, source):
    return csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=source)


def test_snapshot_is_idempotent_ready_and_listed(controller):
    volume = controller.CreateVolume(create_request(size=2 * GiB), timeout=30).volume
    name = f"snap-{uuid.uuid4()}"
    snap = controller.CreateSnapshot(snapshot_request(name, volume.volume_id), timeout=60).snapshot
    assert snap.ready_to_use and snap.size_bytes == 2 * GiB and snap.source_volume_id == volume.volume_id
    assert snap.creation_time.seconds > 0
    assert controller.CreateSnapshot(snapshot_request(name, volume.volume_id), timeout=60).snapshot.snapshot_id == snap.snapshot_id
    other = controller.CreateVolume(create_request(), timeout=30).volume
    assert code_of(controller.CreateSnapshot, snapshot_request(name, other.volume_id))[0] == grpc.StatusCode.ALREADY_EXISTS
    by_id = controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(snapshot_id=snap.snapshot_id), timeout=30).entries
    assert [e.snapshot.snapshot_id for e in by_id] == [snap.snapshot_id]
    by_source = controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(source_volume_id=volume.volume_id), timeout=30).entries
    assert [e.snapshot.snapshot_id for e in by_source] == [snap.snapshot_id]
    assert controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(snapshot_id="sim/1/csi-snap-nothing"), timeout=30).entries == []
    # The snapshot is a copy: the source can go, the snapshot stays.
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)
    assert controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(snapshot_id=snap.snapshot_id), timeout=30).entries[0].snapshot.ready_to_use
    controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=60)
    controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=60)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=other.volume_id), timeout=30)


def test_concurrent_snapshots_never_race_for_a_vmid(controller):
    # Each snapshot of an lvm thick volume is a VM (a full copy); Proxmox's nextid gives concurrent
    # askers the same vmid, so the driver takes its vmids one at a time: no create is refused.
    volume = controller.CreateVolume(create_request(storage="vg0"), timeout=30).volume
    since = len(simulator_log())
    requests = [csi_pb2.CreateSnapshotRequest(name=f"snap-{uuid.uuid4()}", source_volume_id=volume.volume_id) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        snapshots = list(pool.map(lambda r: controller.CreateSnapshot(r, timeout=60).snapshot, requests))
    creates = [e for e in simulator_log()[since:] if e["method"] == "POST" and e["path"].endswith("/qemu")]
    assert [e["status"] for e in creates] == [200] * 8
    assert len({s.snapshot_id for s in snapshots}) == 8
    for snapshot in snapshots:
        controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id), timeout=60)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)


def test_snapshot_of_a_missing_volume_is_not_found(controller):
    assert code_of(controller.CreateSnapshot, snapshot_request("s", "sim//ceph/vm-9999-gone"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(controller.CreateSnapshot, snapshot_request("", "sim//ceph/vm-9999-gone"))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_restore_a_larger_volume_from_a_snapshot_then_delete_everything(controller):
    volume = controller.CreateVolume(create_request(size=GiB), timeout=30).volume
    snap = controller.CreateSnapshot(snapshot_request(f"snap-{uuid.uuid4()}", volume.volume_id), timeout=60).snapshot
    source = csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
    request = create_request(size=3 * GiB, volume_content_source=source)
    restored = controller.CreateVolume(request, timeout=60).volume
    assert restored.capacity_bytes == 3 * GiB and restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    assert controller.CreateVolume(request, timeout=60).volume.volume_id == restored.volume_id
    # Same name, different source: refused.
    assert code_of(controller.CreateVolume, create_request(name=request.name))[0] == grpc.StatusCode.ALREADY_EXISTS
    listed = [e.volume.volume_id for e in controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30).entries]
    assert restored.volume_id in listed
    # It attaches and detaches like any volume.
    publish = csi_pb2.ControllerPublishVolumeRequest(volume_id=restored.volume_id, node_id="k8s-node-1", volume_capability=mount_capability())
    assert controller.ControllerPublishVolume(publish, timeout=30).publish_context["serial"].startswith("csi-")
    controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=restored.volume_id, node_id="k8s-node-1"), timeout=30)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=restored.volume_id), timeout=60)
    controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=60)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)
    leftovers = [vm["config"]["name"] for vm in simulator_state()["vms"].values()
                 if vm["config"]["name"].startswith(("csi-vol-", "csi-snap-"))]
    assert not any(snap.snapshot_id.endswith(n) for n in leftovers)


def test_restore_from_a_missing_snapshot_is_not_found(controller):
    source = csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id="sim/999/csi-snap-gone"))
    assert code_of(controller.CreateVolume, create_request(volume_content_source=source))[0] == grpc.StatusCode.NOT_FOUND


def test_clone_a_volume(controller):
    volume = controller.CreateVolume(create_request(size=GiB), timeout=30).volume
    source = csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume.volume_id))
    clone = controller.CreateVolume(create_request(volume_content_source=source), timeout=60).volume
    assert clone.volume_id != volume.volume_id and clone.capacity_bytes == GiB
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=clone.volume_id), timeout=60)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def disk_value(vmid, volume_id):
    name = volume_id.rsplit("/", 1)[1]
    values = [v for k, v in simulator_state()["vms"][str(vmid)]["config"].items() if name in v and not k.startswith("unused")]
    return values[0] if values else None


def test_modify_a_detached_volume_applies_at_the_next_attach(controller):
    volume = controller.CreateVolume(create_request(parameters={"storage": "ceph", "diskIOPS": "100"}), timeout=30).volume
    controller.ControllerModifyVolume(csi_pb2.ControllerModifyVolumeRequest(
        volume_id=volume.volume_id, mutable_parameters={"diskIOPS": "800", "cache": "writeback"}), timeout=60)
    controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id="k8s-node-2", volume_capability=mount_capability(),
        volume_context=volume.volume_context), timeout=30)
    value = disk_value(101, volume.volume_id)
    assert "iops_rd=800" in value and "iops_wr=800" in value and "cache=writeback" in value and "iops_rd=100" not in value
    controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id, node_id="k8s-node-2"), timeout=30)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)
    names = [vm["config"]["name"] for vm in simulator_state()["vms"].values()]
    assert not any(n.startswith("csi-opt-") for n in names), "the options record goes with the volume"


def test_modify_an_attached_volume_changes_the_disk_live(controller):
    volume = controller.CreateVolume(create_request(), timeout=30).volume
    controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id="k8s-node-2", volume_capability=mount_capability()), timeout=30)
    serial_before = disk_value(101, volume.volume_id).split("serial=")[1].split(",")[0]
    controller.ControllerModifyVolume(csi_pb2.ControllerModifyVolumeRequest(
        volume_id=volume.volume_id, mutable_parameters={"diskMBps": "250", "backup": "false"}), timeout=60)
    value = disk_value(101, volume.volume_id)
    assert "mbps_rd=250" in value and "mbps_wr=250" in value and "backup=0" in value
    assert f"serial={serial_before}" in value, "the disk keeps its identity"
    controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id, node_id="k8s-node-2"), timeout=30)
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)


@pytest.mark.parametrize("parameters, words", [
    ({"ssd": "true"}, "\"ssd\" is not supported"),
    ({"diskIOPS": "lots"}, "\"diskIOPS\" must be a whole number"),
])
def test_modify_refuses_what_cannot_change(controller, parameters, words):
    volume = controller.CreateVolume(create_request(), timeout=30).volume
    got, details = code_of(controller.ControllerModifyVolume, csi_pb2.ControllerModifyVolumeRequest(
        volume_id=volume.volume_id, mutable_parameters=parameters))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def test_a_vms_own_disk_is_never_touched(controller):
    own = "sim/pve1/local-lvm/vm-100-disk-0"
    before = simulator_state()
    publish = csi_pb2.ControllerPublishVolumeRequest(volume_id=own, node_id="k8s-node-3", volume_capability=mount_capability())
    assert code_of(controller.ControllerPublishVolume, publish)[0] == grpc.StatusCode.NOT_FOUND
    expand = csi_pb2.ControllerExpandVolumeRequest(volume_id=own, capacity_range=csi_pb2.CapacityRange(required_bytes=64 * GiB))
    assert code_of(controller.ControllerExpandVolume, expand)[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(controller.CreateSnapshot, snapshot_request(f"s-{uuid.uuid4()}", own))[0] == grpc.StatusCode.NOT_FOUND
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=own), timeout=30)
    after = simulator_state()
    assert "local-lvm:vm-100-disk-0" in after["storages"]["local-lvm@pve1"]["volumes"]
    assert after["vms"]["100"]["config"] == before["vms"]["100"]["config"]
    assert after["vms"]["102"]["config"] == before["vms"]["102"]["config"]


def test_zz_proxmox_never_saw_a_request_its_schema_rejects():
    # Runs last in this file: by now every controller path above has talked to Proxmox.
    log = simulator_log()
    assert log, "the simulator saw no request"
    assert [e for e in log if e["status"] == 400] == []
