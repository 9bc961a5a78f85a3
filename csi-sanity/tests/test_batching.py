"""Attachments to one VM that wait for each other go to Proxmox in one config
write, and one refused or failed change never fails the others (needs the
runner's simulator and driver: SIM_URL is set by csi-sanity/run)."""
import json
import os
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

import csi_pb2
import csi_pb2_grpc

pytestmark = pytest.mark.skipif(not os.environ.get("SIM_URL"), reason="needs csi-sanity/run's simulator and driver")
GiB = 1 << 30
VMID, NODE = 102, "k8s-node-3"  # not the local-mode VM: no loop devices needed
WRITER = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
                                  access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))


def simulator(method, path, **params):
    request = urllib.request.Request(os.environ["SIM_URL"] + path, data=urllib.parse.urlencode(params).encode() if params else None,
                                     method=method)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["data"]


def config_writes(since):
    """The HTTP status of each write of the VM's config since log entry `since`."""
    return [entry["status"] for entry in simulator("GET", "/_sim/log")[since:]
            if entry["method"] == "POST" and entry["path"].endswith(f"/qemu/{VMID}/config")]


def attached_volids():
    config = simulator("GET", "/_sim/state")["vms"][str(VMID)]["config"]
    return {key: value.split(",")[0] for key, value in config.items() if key.startswith("scsi")}


def attached_names():
    return {volid.split(":")[-1] for volid in attached_volids().values()}


def name_of(volume):
    return volume.volume_id.split("/")[-1]


@pytest.fixture
def controller(channel):
    return csi_pb2_grpc.ControllerStub(channel)


@pytest.fixture
def volumes(controller):
    made = []

    def make(count):
        for _ in range(count):
            made.append(controller.CreateVolume(csi_pb2.CreateVolumeRequest(
                name=f"pvc-{uuid.uuid4()}", capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
                volume_capabilities=[WRITER], parameters={"storage": "ceph"}), timeout=30).volume)
        return made[-count:]
    yield make
    simulator("PUT", "/_sim/faults", rules="[]")
    for volume in made:
        controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id), timeout=30)
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def publish(controller, volume, readonly=False):
    try:
        controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume.volume_id, node_id=NODE, volume_capability=WRITER, readonly=readonly,
            volume_context=volume.volume_context), timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def unpublish(controller, volume):
    controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id, node_id=NODE), timeout=30)
    return grpc.StatusCode.OK


def wait_until_the_first_fault_fired():
    """Until the simulator has picked the first injected rule (it is now holding that request)."""
    deadline = time.monotonic() + 20
    while simulator("GET", "/_sim/faults")[0].get("remaining") != 0:
        assert time.monotonic() < deadline, "the held request never came"
        time.sleep(0.02)


def first_then_together(call, first, rest):
    """`first` alone, then — while Proxmox still works on its write (held 2 s
    by an injected delay) — all of `rest` at once. Returns every result."""
    with ThreadPoolExecutor(len(rest) + 1) as pool:
        leading = pool.submit(call, first)
        wait_until_the_first_fault_fired()
        following = [pool.submit(call, item) for item in rest]
        return [leading.result()] + [f.result() for f in following]


def hold_first_write(then=()):
    simulator("PUT", "/_sim/faults", rules=json.dumps(
        [{"method": "POST", "path": f"/qemu/{VMID}/config$", "delay_ms": 2000, "count": 1}, *then]))


def test_attachments_that_wait_together_are_one_write_and_so_are_detachments(controller, volumes):
    made = volumes(6)
    since = len(simulator("GET", "/_sim/log"))
    hold_first_write()
    assert first_then_together(lambda v: publish(controller, v), made[0], made[1:]) == [grpc.StatusCode.OK] * 6
    # The first volume's write, then one for the five that waited behind it.
    assert config_writes(since) == [200, 200]
    wanted = {name_of(v) for v in made}
    assert attached_names() >= wanted

    since = len(simulator("GET", "/_sim/log"))
    hold_first_write()
    assert first_then_together(lambda v: unpublish(controller, v), made[0], made[1:]) == [grpc.StatusCode.OK] * 6
    assert config_writes(since) == [200, 200]
    assert not attached_names() & wanted


def test_a_refused_attachment_leaves_the_others_of_its_write_alone(controller, volumes):
    attached, fresh_one, fresh_two = volumes(3)
    assert publish(controller, attached) == grpc.StatusCode.OK
    leader = volumes(1)[0]
    since = len(simulator("GET", "/_sim/log"))
    hold_first_write()
    # Read-only where it is attached read-write: ALREADY_EXISTS for that one alone.
    results = first_then_together(lambda job: publish(controller, *job),
                                  (leader, False), [(fresh_one, False), (attached, True), (fresh_two, False)])
    assert results == [grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OK]
    assert config_writes(since) == [200, 200]
    assert {name_of(v) for v in (attached, leader, fresh_one, fresh_two)} <= attached_names()


@pytest.mark.parametrize("message, writes", [
    # A failed hot-plug: each of the three that waited is written again alone.
    ("hotplug problem - injected", [200, 500, 200, 200, 200]),
    # Someone else changed the config between the driver's read and its write:
    # read again, and the same batch written once more, not split.
    ("checksum mismatch (file change by other user?)", [200, 500, 200]),
], ids=["failed-write-split", "digest-conflict-redone"])
def test_a_write_that_fails_is_redone_without_failing_its_edits(controller, volumes, message, writes):
    made = volumes(4)
    since = len(simulator("GET", "/_sim/log"))
    hold_first_write(then=[{"method": "POST", "path": f"/qemu/{VMID}/config$", "status": 500, "message": message, "count": 1}])
    assert first_then_together(lambda v: publish(controller, v), made[0], made[1:]) == [grpc.StatusCode.OK] * 4
    assert config_writes(since) == writes
    assert {name_of(v) for v in made} <= attached_names()


def test_a_read_that_overlapped_a_detach_is_not_trusted_after_it(controller, volumes):
    volume, = volumes(1)
    assert publish(controller, volume) == grpc.StatusCode.OK
    # A scan (GetVolume) reads the VM's config while the volume is attached; the
    # answer arrives late, after the detach below has finished.
    simulator("PUT", "/_sim/faults", rules=json.dumps([{"method": "GET", "path": f"/qemu/{VMID}/pending$",
                                                        "reply_delay_ms": 1500, "count": 1}]))
    with ThreadPoolExecutor(1) as pool:
        scan = pool.submit(controller.ControllerGetVolume, csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id),
                           timeout=30)
        wait_until_the_first_fault_fired()
        assert unpublish(controller, volume) == grpc.StatusCode.OK
        assert list(scan.result().status.published_node_ids) == [NODE]  # true when it was read
    # What that late read said must not outlive the detach: the volume is free.
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)


def test_a_slot_freed_in_a_write_is_not_filled_in_the_same_write(controller, volumes):
    leaving, leader, arriving = volumes(3)
    assert publish(controller, leaving) == grpc.StatusCode.OK
    freed = next(key for key, volid in attached_volids().items() if volid.endswith(name_of(leaving)))
    since = len(simulator("GET", "/_sim/log"))
    hold_first_write()
    jobs = [(publish, leader), (unpublish, leaving), (publish, arriving)]
    assert first_then_together(lambda job: job[0](controller, job[1]), jobs[0], jobs[1:]) == [grpc.StatusCode.OK] * 3
    writes = [e["params"] for e in simulator("GET", "/_sim/log")[since:]
              if e["method"] == "POST" and e["path"].endswith(f"/qemu/{VMID}/config")]
    # The detach and the attach went together, but the new disk took another slot:
    # swapping volumes inside one device is not what Proxmox should be asked to hot-plug.
    assert len(writes) == 2 and writes[1].get("delete") == freed
    assert freed not in writes[1]
    assert name_of(arriving) in next(value for key, value in writes[1].items() if key.startswith("scsi"))


def test_an_attachment_waiting_for_a_slot_freed_in_the_same_write_takes_it_in_the_next(controller, volumes):
    # Fill every SCSI slot of the VM (its own disk is virtio0: 31 slots).
    full = volumes(31)
    with ThreadPoolExecutor(31) as pool:
        assert set(pool.map(lambda v: publish(controller, v), full)) == {grpc.StatusCode.OK}
    assert len(attached_volids()) == 31
    first_leaving, second_leaving = full[0], full[1]
    arriving_one, arriving_two = volumes(2)
    since = len(simulator("GET", "/_sim/log"))
    hold_first_write()
    # Write 1 frees a slot; write 2 frees another and fills the first; the second
    # newcomer needs the slot write 2 frees, so it goes in write 3 — not RESOURCE_EXHAUSTED.
    jobs = [(unpublish, first_leaving), (unpublish, second_leaving), (publish, arriving_one), (publish, arriving_two)]
    assert first_then_together(lambda job: job[0](controller, job[1]), jobs[0], jobs[1:]) == [grpc.StatusCode.OK] * 4
    assert config_writes(since) == [200, 200, 200]
    names = attached_names()
    assert {name_of(arriving_one), name_of(arriving_two)} <= names
    assert not {name_of(first_leaving), name_of(second_leaving)} & names
