"""What a controller killed mid-operation leaves behind, and how the next one
copes: a snapshot VM still being created by an earlier attempt, and twins of a
copy VM made by a create retried after a crash (found by the load harness's
crash runs, `scripts/benchmark-load --crash`)."""
import hashlib
import json
import os
import urllib.parse
import urllib.request
import uuid

import grpc
import pytest

import csi_pb2
import csi_pb2_grpc

pytestmark = pytest.mark.skipif(not os.environ.get("SIM_URL"), reason="needs csi-sanity/run's simulator and driver")
TOKEN = "PVEAPIToken=csi@pve!csi=5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21"
CAP = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
                               access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))


def proxmox(method, path, **params):
    """The simulator's API as an operator (or a dead controller) would have used it."""
    body = urllib.parse.urlencode(params).encode() if method != "GET" else None
    request = urllib.request.Request(os.environ["SIM_URL"] + "/api2/json" + path, data=body, method=method,
                                     headers={"Authorization": TOKEN})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["data"]


def create_vm(**params):
    """Creates a VM and waits for its create task, as the dead controller's request would have."""
    upid = proxmox("POST", "/nodes/pve1/qemu", **params)
    for _ in range(200):
        if proxmox("GET", f"/nodes/pve1/tasks/{urllib.parse.quote(upid, safe='')}/status")["status"] == "stopped":
            return
    raise AssertionError(f"{upid} did not finish")


def simulator(method, path, **params):
    request = urllib.request.Request(os.environ["SIM_URL"] + path, data=urllib.parse.urlencode(params).encode(), method=method)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["data"]


def snapshot_vm_name(snapshot_name):
    return "csi-snap-" + hashlib.sha256(snapshot_name.encode()).hexdigest()[:24]


@pytest.fixture
def controller(channel):
    return csi_pb2_grpc.ControllerStub(channel)


@pytest.fixture
def volume(controller):
    created = controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=f"pvc-{uuid.uuid4()}", capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30),
        volume_capabilities=[CAP], parameters={"storage": "vg0"}), timeout=60).volume  # lvm thick: snapshots are copy VMs
    yield created
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=created.volume_id), timeout=60)


def test_a_snapshot_still_being_created_by_an_earlier_attempt_is_not_made_twice(controller, volume):
    name = f"snap-{uuid.uuid4()}"
    vmid = int(proxmox("GET", "/cluster/nextid"))
    # What a controller that died right after asking Proxmox leaves while the create task
    # runs: a VM holding only `lock: create` and no name (qemu-server writes the name last).
    create_vm(vmid=vmid, name=snapshot_vm_name(name), memory=64)
    simulator("PUT", "/_sim/vm-config", vmid=vmid, key="name", value="")
    simulator("PUT", "/_sim/lock", vmid=vmid, lock="create")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=volume.volume_id), timeout=60)
        assert caught.value.code() == grpc.StatusCode.ABORTED and "being created" in caught.value.details()
        named = [vm for vm in simulator("GET", "/_sim/state")["vms"].values() if vm["config"].get("name") == snapshot_vm_name(name)]
        assert named == [], "no second VM was made"
    finally:
        simulator("PUT", "/_sim/lock", vmid=vmid, lock="")
        proxmox("DELETE", f"/nodes/pve1/qemu/{vmid}")


def test_deleting_a_snapshot_destroys_its_twins(controller, volume):
    name = f"snap-{uuid.uuid4()}"
    snapshot = controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=volume.volume_id),
                                         timeout=120).snapshot
    first = snapshot.snapshot_id.split("/")[1]
    state = simulator("GET", "/_sim/state")
    description = state["vms"][first]["config"]["description"]
    # A create retried after a crash made a second VM for the same snapshot.
    twin = int(proxmox("GET", "/cluster/nextid"))
    create_vm(vmid=twin, name=snapshot_vm_name(name), memory=64, description=description)
    # An unrelated VM that happens to share the name but not the description is left alone.
    stranger = twin + 1
    create_vm(vmid=stranger, name=snapshot_vm_name(name), memory=64, description="someone else's")
    controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id), timeout=120)
    vms = simulator("GET", "/_sim/state")["vms"]
    assert first not in vms and str(twin) not in vms
    assert str(stranger) in vms
    proxmox("DELETE", f"/nodes/pve1/qemu/{stranger}")
