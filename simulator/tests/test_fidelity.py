"""Pins the simulator's behaviours that follow qemu-server and pve-manager
where they differ from what the driver first believed (simulator/FIDELITY.md
names the sub each one follows)."""
import json

import pytest

from test_simulator import api, attach, control, sim  # noqa: F401  (fixtures and helpers)


def make_disk(api, name="vm-9999-p"):
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename=name, size="1G")
    return f"local-lvm:{name}"


def test_a_failed_hot_unplug_stays_pending_and_the_disk_stays_current(sim, api):
    volid = make_disk(api)
    attach(api, "scsi1", volid)
    control(sim, "PUT", "/_sim/hotplug-faults", rules=json.dumps([{"action": "unplug", "count": 1}]))
    reply = api.call("POST", "/nodes/pve1/qemu/100/config", delete="scsi1", background_delay=5)
    # update_vm dies "failed to update VM 100: <task status>" when the task failed in time.
    assert reply.status == 500 and "hotplug problem" in reply.reason
    assert "scsi1" not in api.ok("GET", "/nodes/pve1/qemu/100/config")
    assert api.ok("GET", "/nodes/pve1/qemu/100/config", current=1)["scsi1"].startswith(volid)
    pending = {item["key"]: item for item in api.ok("GET", "/nodes/pve1/qemu/100/pending")}
    assert pending["scsi1"]["delete"] == 1 and pending["scsi1"]["value"].startswith(volid)
    assert control(sim, "GET", "/_sim/holders", volid=volid) == [100]
    # Deleting again retries the unplug.
    api.wait(api.ok("POST", "/nodes/pve1/qemu/100/config", delete="scsi1"))
    assert "scsi1" not in api.ok("GET", "/nodes/pve1/qemu/100/config", current=1)
    assert control(sim, "GET", "/_sim/holders", volid=volid) == []


def test_without_disk_hotplug_an_attach_stays_pending_and_the_task_succeeds(sim, api):
    volid = make_disk(api)
    control(sim, "PUT", "/_sim/vm-config", vmid=100, key="hotplug", value="network,usb")
    status = api.wait(api.ok("POST", "/nodes/pve1/qemu/100/config", scsi1=volid))
    assert status["exitstatus"] == "OK"
    assert api.ok("GET", "/nodes/pve1/qemu/100/config")["scsi1"].startswith(volid)
    assert "scsi1" not in api.ok("GET", "/nodes/pve1/qemu/100/config", current=1)
    before = api.ok("GET", "/nodes/pve1/qemu/100/config")["digest"]
    # revert drops the pending change (and the digest covers the pending section).
    api.wait(api.ok("POST", "/nodes/pve1/qemu/100/config", revert="scsi1"))
    assert "scsi1" not in api.ok("GET", "/nodes/pve1/qemu/100/config")
    assert api.ok("GET", "/nodes/pve1/qemu/100/config")["digest"] != before


def test_a_stopped_vm_takes_every_change_at_once(sim, api):
    volid = make_disk(api)
    control(sim, "PUT", "/_sim/vm-status", vmid=100, status="stopped")
    control(sim, "PUT", "/_sim/vm-config", vmid=100, key="hotplug", value="0")
    api.wait(api.ok("POST", "/nodes/pve1/qemu/100/config", scsi1=volid))
    assert api.ok("GET", "/nodes/pve1/qemu/100/config", current=1)["scsi1"].startswith(volid)
    assert api.ok("GET", "/nodes/pve1/qemu/100/pending") and not any(
        "pending" in item or "delete" in item for item in api.ok("GET", "/nodes/pve1/qemu/100/pending"))


def test_a_vm_being_created_has_no_name_until_its_disks_are_copied(sim, api):
    source = make_disk(api, "vm-9999-src")
    sim.cluster.task_seconds["import-per-gib"] = 0.6
    upid = api.ok("POST", "/nodes/pve1/qemu", vmid=300, name="csi-snap-x", description="d",
                  scsi0="local-lvm:0,import-from=" + source)
    entry = next(r for r in api.ok("GET", "/cluster/resources", type="vm") if r["vmid"] == 300)
    assert "name" not in entry and entry["lock"] == "create"
    assert set(api.ok("GET", "/nodes/pve1/qemu/300/config")) == {"lock", "digest"}
    active = api.ok("GET", "/nodes/pve1/tasks", vmid=300, source="active")
    assert [task["type"] for task in active] == ["qmcreate"]
    assert api.wait(upid)["exitstatus"] == "OK"
    config = api.ok("GET", "/nodes/pve1/qemu/300/config")
    assert config["name"] == "csi-snap-x" and config["scsi0"].startswith("local-lvm:vm-300-disk-0")
    assert api.ok("GET", "/nodes/pve1/tasks", vmid=300, source="active") == []


def test_a_failed_create_leaves_no_vm_and_no_disk(sim, api):
    upid = api.ok("POST", "/nodes/pve1/qemu", vmid=301, name="big", scsi0="local:4096")
    assert "unable to create VM 301" in api.wait(upid)["exitstatus"]
    assert 301 not in sim.cluster.vms
    assert not [v for s in sim.cluster.storages.values() for v in s.volumes.values() if v.vmid == 301]


def test_after_a_migration_the_old_node_does_not_know_the_vm(sim, api):
    control(sim, "PUT", "/_sim/migrate", vmid=102, target="pve2")
    reply = api.call("GET", "/nodes/pve1/qemu/102/config")
    assert reply.status == 500 and "does not exist" in reply.reason
    assert api.ok("GET", "/nodes/pve2/qemu/102/config")["virtio0"].startswith("ceph:")
    entry = next(r for r in api.ok("GET", "/cluster/resources", type="vm") if r["vmid"] == 102)
    assert entry["node"] == "pve2"


def test_protection_forbids_destroying_the_vm_and_removing_its_disks(sim, api):
    upid = api.ok("POST", "/nodes/pve1/qemu", vmid=302, name="keep", protection=1, scsi0="local-lvm:1")
    api.wait(upid)
    reply = api.call("DELETE", "/nodes/pve1/qemu/302")
    assert reply.status == 500 and "protection mode enabled" in reply.reason
    status = api.wait(api.ok("POST", "/nodes/pve1/qemu/302/config", delete="scsi0"))
    assert "can't remove drive 'scsi0' - protection mode enabled" in status["exitstatus"]
    api.ok("PUT", "/nodes/pve1/qemu/302/config", delete="protection")
    api.wait(api.ok("DELETE", "/nodes/pve1/qemu/302"))
    assert 302 not in sim.cluster.vms


@pytest.mark.parametrize("bus,option,accepted", [
    ("scsi", "ssd=1", True), ("virtio", "ssd=0", False), ("virtio", "wwn=0x5056432d49443031", False),
    ("scsi", "wwn=0x5056432d49443031", True), ("virtio", "iothread=1", True), ("virtio", "discard=on", True),
])
def test_each_bus_takes_only_its_own_drive_options(sim, api, bus, option, accepted):
    volid = make_disk(api)
    reply = api.call("POST", "/nodes/pve1/qemu/100/config", **{f"{bus}5": f"{volid},{option}"})
    assert (reply.status == 200) == accepted, (reply.status, reply.reason, reply.raw)


def test_a_write_that_puts_a_volume_into_a_held_slot_is_recorded(sim, api):
    first, second = make_disk(api, "vm-9999-first"), make_disk(api, "vm-9999-second")
    attach(api, "scsi1", first)
    assert control(sim, "GET", "/_sim/state")["in_place_swaps"] == []
    attach(api, "scsi1", second)  # one write swapping the volume inside the device
    assert control(sim, "GET", "/_sim/state")["in_place_swaps"] == [
        {"vm": 100, "key": "scsi1", "held": first, "new": second}]
