"""The controller where real Proxmox differs from what the driver first
believed (simulator/FIDELITY.md cites the qemu-server code each case follows):
pending hot-plug changes, VMs without disk hot-plug, migrated VMs, names two
VMs share, and drive options each bus accepts. Needs the runner's simulator
and driver (SIM_URL is set by csi-sanity/run)."""
import hashlib
import json
import os
import threading
import time
import uuid

import grpc
import pytest

import csi_pb2
from test_batching import VMID, NODE, WRITER, GiB, controller, simulator  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not os.environ.get("SIM_URL"), reason="needs csi-sanity/run's simulator and driver")
OTHER_VMID, OTHER_NODE = 101, "k8s-node-2"


@pytest.fixture
def volume(controller):
    made = []

    def make(parameters=None):
        made.append(controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=f"pvc-{uuid.uuid4()}", capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
            volume_capabilities=[WRITER], parameters=parameters or {"storage": "ceph"}), timeout=30).volume)
        return made[-1]
    yield make
    simulator("PUT", "/_sim/hotplug-faults", rules="[]")
    simulator("PUT", "/_sim/vm-config", vmid=VMID, key="hotplug", value="network,disk,usb")
    for each in made:
        controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=each.volume_id), timeout=30)
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=each.volume_id), timeout=30)


def call(method, request):
    try:
        method(request, timeout=30)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        return error.code(), error.details()


def publish(controller, vol, node=NODE):
    return call(controller.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
        volume_id=vol.volume_id, node_id=node, volume_capability=WRITER, volume_context=vol.volume_context))


def unpublish(controller, vol, node=NODE):
    return call(controller.ControllerUnpublishVolume, csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=vol.volume_id, node_id=node))


def volid(vol):
    return "ceph:" + vol.volume_id.split("/")[-1]


def holders(vol):
    return simulator("GET", "/_sim/holders?volid=" + volid(vol))


def test_unpublish_is_never_ok_while_a_failed_unplug_keeps_the_disk(controller, volume):
    vol = volume()
    assert publish(controller, vol)[0] == grpc.StatusCode.OK
    simulator("PUT", "/_sim/hotplug-faults", rules=json.dumps([{"vmid": VMID, "action": "unplug", "count": 3}]))
    # The unplug fails three times: each unpublish says so, none answers OK, and
    # publishing to another node is refused while the running VM holds the disk.
    for _ in range(3):
        code, details = unpublish(controller, vol)
        assert code != grpc.StatusCode.OK and "hotplug problem" in details, (code, details)
        assert holders(vol) == [VMID]
    code, details = publish(controller, vol, node=OTHER_NODE)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and f"VM {VMID}" in details
    code, details = call(controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    # The next attempt unplugs it.
    assert unpublish(controller, vol)[0] == grpc.StatusCode.OK
    assert holders(vol) == []
    assert publish(controller, vol, node=OTHER_NODE)[0] == grpc.StatusCode.OK
    assert unpublish(controller, vol, node=OTHER_NODE)[0] == grpc.StatusCode.OK


def test_a_failed_plug_is_retried_by_the_next_publish(controller, volume):
    vol = volume()
    simulator("PUT", "/_sim/hotplug-faults", rules=json.dumps([{"vmid": VMID, "action": "plug", "count": 1}]))
    code, details = publish(controller, vol)
    assert code != grpc.StatusCode.OK and "hotplug problem" in details
    assert publish(controller, vol)[0] == grpc.StatusCode.OK
    config = simulator("GET", "/_sim/state")["vms"][str(VMID)]
    assert any(v.startswith(volid(vol)) for v in config["config"].values()) and not config["pending"]


def test_a_vm_whose_hotplug_leaves_out_disks_is_failed_precondition_and_nothing_stays_pending(controller, volume):
    vol = volume()
    simulator("PUT", "/_sim/vm-config", vmid=VMID, key="hotplug", value="network,usb")
    code, details = publish(controller, vol)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and 'hotplug "network,usb"' in details, details
    state = simulator("GET", "/_sim/state")["vms"][str(VMID)]
    assert not state["pending"] and holders(vol) == []


def test_a_detach_the_vm_cannot_hot_unplug_is_failed_precondition_while_it_holds_the_disk(controller, volume):
    vol = volume()
    assert publish(controller, vol)[0] == grpc.StatusCode.OK
    simulator("PUT", "/_sim/vm-config", vmid=VMID, key="hotplug", value="network,usb")
    for _ in range(2):
        code, details = unpublish(controller, vol)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "until the VM restarts" in details, details
        assert holders(vol) == [VMID]
    # Publishing it again to the same node keeps it: the pending detach is dropped.
    assert publish(controller, vol)[0] == grpc.StatusCode.OK
    assert not simulator("GET", "/_sim/state")["vms"][str(VMID)]["pending_delete"]
    simulator("PUT", "/_sim/vm-config", vmid=VMID, key="hotplug", value="network,disk,usb")
    assert unpublish(controller, vol)[0] == grpc.StatusCode.OK and holders(vol) == []


def test_a_hotplug_change_while_the_detach_task_runs_is_never_an_ok_unpublish(controller, volume):
    """The fault run's hotplug toggles landed while a detach task ran. qemu-server's
    worker checks the digest again under the VM's lock, so the task fails and the
    driver decides again on the config as it now is, which keeps the disk."""
    vol = volume()
    assert publish(controller, vol)[0] == grpc.StatusCode.OK
    simulator("PUT", "/_sim/task-seconds", qmconfig=1.5)
    try:
        outcome = []
        detaching = threading.Thread(target=lambda: outcome.append(unpublish(controller, vol)))
        detaching.start()
        time.sleep(0.5)
        simulator("PUT", "/_sim/vm-config", vmid=VMID, key="hotplug", value="network,usb")
        detaching.join()
    finally:
        simulator("PUT", "/_sim/task-seconds", qmconfig=0.02)
    code, details = outcome[0]
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "until the VM restarts" in details, (code, details)
    assert holders(vol) == [VMID]


def test_a_migrated_vm_is_found_on_its_new_node(controller, volume):
    vol = volume()
    assert publish(controller, vol)[0] == grpc.StatusCode.OK
    simulator("PUT", "/_sim/migrate", vmid=VMID, target="pve2")
    try:
        # The old node answers "does not exist" for the VM: the driver must look again, not call it gone.
        assert unpublish(controller, vol)[0] == grpc.StatusCode.OK
        assert holders(vol) == []
        assert publish(controller, vol)[0] == grpc.StatusCode.OK
        assert holders(vol) == [VMID]
    finally:
        unpublish(controller, vol)
        simulator("PUT", "/_sim/migrate", vmid=VMID, target="pve1")


def test_a_node_name_two_vms_share_resolves_to_neither(controller, volume):
    vol = volume()
    simulator("PUT", "/_sim/vm-config", vmid=OTHER_VMID, key="name", value=NODE)
    try:
        code, details = publish(controller, vol)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "2 VMs named" in details, details
        assert holders(vol) == []
        # The cluster/vmid form still names exactly one.
        assert publish(controller, vol, node=f"sim/{VMID}")[0] == grpc.StatusCode.OK
        assert unpublish(controller, vol, node=f"sim/{VMID}")[0] == grpc.StatusCode.OK
    finally:
        simulator("PUT", "/_sim/vm-config", vmid=OTHER_VMID, key="name", value=OTHER_NODE)


OPTIONS = [("cache", v) for v in ("none", "writethrough", "writeback", "directsync", "unsafe")] + [
    (key, value) for key in ("ssd", "discard", "iothread", "backup") for value in ("true", "false")] + [
    ("diskIOPS", "500"), ("diskMBps", "100")] + [("aio", v) for v in ("native", "threads", "io_uring")]


@pytest.mark.parametrize("bus", ["scsi", "virtio"])
@pytest.mark.parametrize("key,value", OPTIONS)
def test_every_storage_class_option_on_every_bus_writes_only_what_the_bus_accepts(controller, volume, bus, key, value):
    parameters = {"storage": "ceph", "bus": bus, key: value}
    if bus == "virtio" and key == "ssd" and value == "true":
        code, details = call(controller.CreateVolume, csi_pb2.CreateVolumeRequest(
            name=f"pvc-{uuid.uuid4()}", volume_capabilities=[WRITER], parameters=parameters))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "bus virtio" in details
        return
    vol = volume(parameters)
    # The simulator checks every write against the official schema's drive format of that bus.
    assert publish(controller, vol) == (grpc.StatusCode.OK, "")
    config = simulator("GET", "/_sim/state")["vms"][str(VMID)]["config"]
    key_of_disk = next(k for k, v in config.items() if v.startswith(volid(vol) + ","))
    assert key_of_disk.startswith(bus)


def test_native_snapshots_of_one_volume_taken_at_once_are_one_storage_snapshot_each(controller, volume):
    """lvmthin and rbd (issue 15): a VM snapshot of the driver's source VM per CSI snapshot,
    each a storage snapshot of the volume; eight at once while it is attached converge."""
    vol = volume({"storage": "ceph"})
    assert publish(controller, vol)[0] == grpc.StatusCode.OK
    names = [f"snap-{uuid.uuid4()}" for _ in range(8)]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda n: controller.CreateSnapshot(snapshot_request(n, vol), timeout=60).snapshot, names))
    assert all(s.ready_to_use for s in taken) and len({s.snapshot_id for s in taken}) == 8
    state = simulator("GET", "/_sim/state")
    assert sorted(state["storages"]["ceph"]["volumes"][volid(vol)]["snapshots"]) == sorted({s.snapshot_id.split("/")[2] for s in taken})
    assert state["double_attachments"] == [] and state["unsafe_snapshots"] == []
    sources = {vmid: vm for vmid, vm in state["vms"].items() if vm["config"].get("name", "").startswith("csi-src-")}
    assert len(sources) == 1 and all("scsi0" not in vm["config"] for vm in sources.values())
    assert all(copy_vms("csi-snap-", n) == {} for n in names), "nothing copied"
    assert holders(vol) == [VMID]
    for snapshot in taken:
        controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id), timeout=60)
    state = simulator("GET", "/_sim/state")
    assert state["storages"]["ceph"]["volumes"][volid(vol)]["snapshots"] == []
    assert not [vm for vm in state["vms"].values() if vm["config"].get("name", "").startswith("csi-src-")]


def stored_format(volid_):
    """The format the simulator's storage holds a volume in (pve-storage's, from its file name)."""
    return next(v["format"] for s in simulator("GET", "/_sim/state")["storages"].values()
                for key, v in s["volumes"].items() if key == volid_)


def test_a_qcow2_class_on_a_dir_storage_makes_qcow2_volumes_and_restores(controller, volume):
    """proxmox-csi-plugin's storageFormat: the file is allocated as qcow2 (the simulator checks the
    extension against the format as pve-storage's alloc_image does), attaches, and a restore into
    the same class is imported as qcow2."""
    parameters = {"storage": "local", "storageFormat": "qcow2"}
    source = volume(parameters)
    assert source.volume_id.endswith(".qcow2"), source.volume_id
    # A dir volume's volid is <storage>:<owner vmid>/<file>.
    assert stored_format(f"local:{source.volume_id.split('/')[-1].split('-')[1]}/{source.volume_id.split('/')[-1]}") == "qcow2"
    assert call(controller.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
        volume_id=source.volume_id, node_id=NODE, volume_capability=WRITER, volume_context=source.volume_context)) \
        == (grpc.StatusCode.OK, "")
    assert unpublish(controller, source)[0] == grpc.StatusCode.OK
    snap = controller.CreateSnapshot(snapshot_request(f"snap-{uuid.uuid4()}", source), timeout=60).snapshot
    restored = controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=f"pvc-{uuid.uuid4()}", volume_capabilities=[WRITER], parameters=parameters,
        volume_content_source=csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(
            snapshot_id=snap.snapshot_id))), timeout=60).volume
    try:
        name = restored.volume_id.split("/")[-1]
        assert name.endswith(".qcow2"), restored.volume_id
        assert stored_format(f"local:{name.split('-')[1]}/{name}") == "qcow2"
    finally:
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=restored.volume_id), timeout=60)
        controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=60)


def copy_vms(prefix, csi_name=None):
    """The driver's copy VMs (of one CSI name: their VM name is the prefix and a hash of it)."""
    wanted = prefix + hashlib.sha256(csi_name.encode()).hexdigest()[:24] if csi_name else None
    return {vmid: vm for vmid, vm in simulator("GET", "/_sim/state")["vms"].items()
            if str(vm["config"].get("name", "")).startswith(prefix) and (wanted is None or vm["config"]["name"] == wanted)}


def snapshot_request(name, vol):
    return csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=vol.volume_id)


def snapshot_and_restore(controller, source):
    """A ready snapshot of `source` and a ceph volume restored from it."""
    snap = controller.CreateSnapshot(snapshot_request(f"snap-{uuid.uuid4()}", source), timeout=60).snapshot
    assert snap.ready_to_use
    restored = controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=f"pvc-{uuid.uuid4()}", volume_capabilities=[WRITER], parameters={"storage": "ceph"},
        volume_content_source=csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(
            snapshot_id=snap.snapshot_id))), timeout=60).volume
    return snap, restored


def test_a_restored_volume_is_in_no_drive_of_its_copy_vm_once_published(controller, volume):
    source = volume()
    snap, restored = snapshot_and_restore(controller, source)
    try:
        assert publish(controller, restored)[0] == grpc.StatusCode.OK
        state = simulator("GET", "/_sim/state")
        assert state["double_attachments"] == [], state["double_attachments"]
        assert holders(restored) == [VMID]
        # Its copy VM keeps it only as an owned unused disk, and refuses to be destroyed.
        record = next(vm for vm in copy_vms("csi-vol-").values()
                      if vm["config"].get("unused0", "").startswith(volid(restored)))
        assert "scsi0" not in record["config"] and record["config"]["protection"] == "1"
        assert unpublish(controller, restored)[0] == grpc.StatusCode.OK
    finally:
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=restored.volume_id), timeout=60)
        controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=60)
    assert not [v for s in simulator("GET", "/_sim/state")["storages"].values() for v in s["volumes"]
                if v == volid(restored)]


def test_what_the_driver_made_before_pvestatd_named_it_is_found(controller, volume):
    """Cluster resources name a VM only after pvestatd's next round (10 s on Proxmox):
    a snapshot restored, a restored volume deleted and a snapshot deleted right after
    they were made must find the VMs the driver just made (by their tags), not miss them."""
    source = volume()
    simulator("PUT", "/_sim/name-round", seconds=600)  # one round now, the next long after this test
    try:
        snap, restored = snapshot_and_restore(controller, source)
        assert copy_vms("csi-vol-")
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=restored.volume_id), timeout=60)
        controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=60)
    finally:
        simulator("PUT", "/_sim/name-round", seconds=0)
    state = simulator("GET", "/_sim/state")
    assert not copy_vms("csi-vol-") and not copy_vms("csi-src-")
    assert state["storages"]["ceph"]["volumes"][volid(source)]["snapshots"] == []
    assert volid(restored) not in state["storages"]["ceph"]["volumes"]


def test_a_slow_copy_is_made_once_whatever_the_retries(controller, volume):
    source = volume({"storage": "vg0"})  # lvm thick: a snapshot is a full copy
    name = f"snap-{uuid.uuid4()}"
    since = len(simulator("GET", "/_sim/log"))
    # The import outlives the first call's 25 s wait (a 40 s copy); the snapshotter calls again meanwhile.
    simulator("PUT", "/_sim/faults", rules=json.dumps([{"method": "POST", "path": r"/qemu/\d+/config$",
                                                        "task_extra_seconds": 40, "count": 1}]))
    try:
        first = controller.CreateSnapshot(snapshot_request(name, source), timeout=60).snapshot
        assert not first.ready_to_use
        again = controller.CreateSnapshot(snapshot_request(name, source), timeout=60).snapshot
        assert again.snapshot_id == first.snapshot_id and not again.ready_to_use
        assert len(copy_vms("csi-snap-", name)) == 1
        imports = [e for e in simulator("GET", "/_sim/log")[since:] if e["method"] == "POST"
                   and "import-from" in e["params"].get("scsi0", "") and e["path"].endswith(first.snapshot_id.split("/")[1] + "/config")]
        assert len(imports) == 1
    finally:
        simulator("PUT", "/_sim/faults", rules="[]")
    for _ in range(40):
        done = controller.CreateSnapshot(snapshot_request(name, source), timeout=60).snapshot
        if done.ready_to_use:
            break
        time.sleep(1)
    assert done.ready_to_use and done.snapshot_id == first.snapshot_id
    controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=done.snapshot_id), timeout=60)
    assert copy_vms("csi-snap-", name) == {}


def test_a_copy_interrupted_before_its_import_is_finished_by_the_retry(controller, volume):
    source = volume({"storage": "vg0"})  # lvm thick: a snapshot is a full copy
    name = f"snap-{uuid.uuid4()}"
    simulator("PUT", "/_sim/faults", rules=json.dumps([{"method": "POST", "path": r"/qemu/\d+/config$",
                                                        "status": 500, "message": "injected", "count": 1}]))
    code, _ = call(controller.CreateSnapshot, snapshot_request(name, source))
    assert code != grpc.StatusCode.OK
    simulator("PUT", "/_sim/faults", rules="[]")
    (vm,) = copy_vms("csi-snap-", name).values()  # named, without its copy
    assert "scsi0" not in vm["config"] and "unused0" not in vm["config"]
    snap = controller.CreateSnapshot(snapshot_request(name, source), timeout=60).snapshot
    assert snap.ready_to_use and len(copy_vms("csi-snap-", name)) == 1
    controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=60)


def test_sixteen_concurrent_duplicates_converge(controller):
    from concurrent.futures import ThreadPoolExecutor
    name = f"pvc-{uuid.uuid4()}"
    request = csi_pb2.CreateVolumeRequest(name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
                                          volume_capabilities=[WRITER], parameters={"storage": "ceph"})

    def create(_):
        try:
            return grpc.StatusCode.OK, controller.CreateVolume(request, timeout=60).volume.volume_id
        except grpc.RpcError as error:
            return error.code(), error.details()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(create, range(16)))
    assert {code for code, _ in results} <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}, results
    ids = {detail for code, detail in results if code == grpc.StatusCode.OK}
    assert len(ids) == 1
    (volume_id,) = ids
    vol = csi_pb2.Volume(volume_id=volume_id)
    with ThreadPoolExecutor(16) as pool:
        published = list(pool.map(lambda _: publish(controller, vol)[0], range(16)))
        assert set(published) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}, published
        assert holders(vol) == [VMID]
        unpublished = list(pool.map(lambda _: unpublish(controller, vol)[0], range(16)))
        assert set(unpublished) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED} and holders(vol) == []
        snapshot_name = f"snap-{uuid.uuid4()}"
        snapshots = list(pool.map(lambda _: call(controller.CreateSnapshot, snapshot_request(snapshot_name, vol))[0], range(16)))

        def listed():
            return controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(source_volume_id=volume_id), timeout=60).entries
        assert set(snapshots) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED} and len(listed()) == 1
        snapshot_id = controller.CreateSnapshot(snapshot_request(snapshot_name, vol), timeout=60).snapshot.snapshot_id
        deleted = list(pool.map(lambda _: call(controller.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id))[0],
                                range(16)))
        assert set(deleted) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED} and listed() == []
        gone = list(pool.map(lambda _: call(controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=volume_id))[0], range(16)))
    assert set(gone) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}
    assert volid(vol) not in [v for s in simulator("GET", "/_sim/state")["storages"].values() for v in s["volumes"]]
