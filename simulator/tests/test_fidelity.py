"""Pins the simulator's behaviours that follow qemu-server and pve-manager
where they differ from what the driver first believed (simulator/FIDELITY.md
names the sub each one follows)."""
import json
import time

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


def test_a_change_by_another_user_while_the_write_waits_for_its_worker_fails_the_task(sim, api):
    """update_vm_api checks the digest before forking and again in the worker
    under the VM's lock: a `qm set --hotplug` that lands between the two fails
    the write, which would otherwise leave its detach pending in silence."""
    volid = make_disk(api)
    attach(api, "scsi1", volid)
    digest = api.ok("GET", "/nodes/pve1/qemu/100/config")["digest"]
    sim.cluster.task_seconds["qmconfig"] = 0.3
    upid = api.ok("POST", "/nodes/pve1/qemu/100/config", delete="scsi1", digest=digest)
    control(sim, "PUT", "/_sim/vm-config", vmid=100, key="hotplug", value="network,usb")
    status = api.wait(upid)
    assert status["exitstatus"] == "checksum mismatch (file change by other user?)"
    # Nothing of the write happened: the disk is current and no delete is pending.
    assert api.ok("GET", "/nodes/pve1/qemu/100/config", current=1)["scsi1"].startswith(volid)
    assert not any(item.get("delete") for item in api.ok("GET", "/nodes/pve1/qemu/100/pending"))


def test_resources_name_a_vm_only_from_pvestatds_next_round(sim, api):
    """pve-manager's resources take `name` from the rrd data pvestatd broadcasts
    each round (extract_vm_stats), `tags` and `lock` from the config at once."""
    def resource(vmid):
        return next((r for r in api.ok("GET", "/cluster/resources", type="vm") if r["vmid"] == vmid), None)
    control(sim, "PUT", "/_sim/name-round", seconds=0.4)
    assert resource(100)["name"] == "k8s-node-1"  # the round that starts now
    api.wait(api.ok("POST", "/nodes/pve1/qemu", vmid=150, name="fresh", tags="fresh", memory=64))
    assert "name" not in resource(150) and resource(150)["tags"] == "fresh"
    time.sleep(0.5)
    assert resource(150)["name"] == "fresh"
    # A vmid used again shows the VM that had it until the next round.
    api.wait(api.ok("DELETE", "/nodes/pve1/qemu/150"))
    api.wait(api.ok("POST", "/nodes/pve1/qemu", vmid=150, name="second", memory=64))
    assert resource(150)["name"] == "fresh"
    control(sim, "PUT", "/_sim/name-round", seconds=0)
    assert resource(150)["name"] == "second"


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


# ------------------------------------------- storage snapshots (issue 15)

@pytest.fixture
def data_sim(tmp_path):
    """A simulator whose volumes are sparse files, so a snapshot's data can be read back."""
    from pvesim.__main__ import load_scenario
    from pvesim.server import Simulator, serve
    from test_simulator import DEFAULT_SCENARIO, Client
    cluster, schema, users, tokens = load_scenario(DEFAULT_SCENARIO, {}, 0.01, data_dir=str(tmp_path / "data"))
    simulator = Simulator(cluster, schema, tokens, users, auth_failure_delay=0.1)
    server = serve(simulator, "127.0.0.1", 0)
    simulator.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield simulator, Client(simulator.base)
    server.shutdown()


def write_volume(sim, volid, text):
    volume = sim.cluster.volume(volid, "pve1")
    with open(volume.path, "r+b") as f:
        f.write(text.encode())


def read_volume(sim, volid, length):
    with open(sim.cluster.volume(volid, "pve1").path, "rb") as f:
        return f.read(length).decode()


def snapshot_vm(api, volid, vmid=120):
    """A stopped VM whose only drive is `volid` (not its own), as a snapshot holder would be."""
    api.wait(api.ok("POST", "/nodes/pve1/qemu", vmid=vmid, name=f"holder-{vmid}"))
    api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/config", scsi0=volid))
    return vmid


@pytest.mark.parametrize("storage", ["local-lvm", "ceph"])
def test_a_clone_of_a_vm_snapshot_holds_the_data_of_that_moment(data_sim, storage):
    sim, api = data_sim
    api.ok("POST", f"/nodes/pve1/storage/{storage}/content", vmid=9999, filename="vm-9999-src", size="1G")
    volid = f"{storage}:vm-9999-src"
    write_volume(sim, volid, "at-the-snapshot")
    vmid = snapshot_vm(api, volid)
    api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/snapshot", snapname="s1"))
    write_volume(sim, volid, "written-later!!")
    api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/clone", newid=130, snapname="s1", full=1, name="restored"))
    config = api.ok("GET", "/nodes/pve1/qemu/130/config")
    assert config["name"] == "restored"
    copy = config["scsi0"].split(",")[0]
    assert read_volume(sim, copy, 15) == "at-the-snapshot"
    assert read_volume(sim, volid, 15) == "written-later!!"
    state = control(sim, "GET", "/_sim/state")
    assert any(v.get("snapshots") == ["s1"] for s in state["storages"].values() for k, v in s["volumes"].items() if k == volid)


def test_zfs_snapshots_but_cannot_copy_from_one(data_sim):
    """ZFSPoolPlugin volume_has_feature: snapshot yes, copy from a snapshot no (copy => base, current)."""
    sim, api = data_sim
    api.ok("POST", "/nodes/pve1/storage/tank/content", vmid=9999, filename="vm-9999-z", size="1G")
    vmid = snapshot_vm(api, "tank:vm-9999-z")
    api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/snapshot", snapname="s1"))
    status = api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/clone", newid=131, snapname="s1", full=1))
    assert status["exitstatus"] != "OK" and "Full clone feature is not supported for a snapshot of" in status["exitstatus"]


def test_deleting_a_vm_snapshot_frees_the_storage_snapshot_and_freeing_a_volume_frees_its_snapshots(data_sim):
    sim, api = data_sim
    for name in ("vm-9999-a", "vm-9999-b"):
        api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename=name, size="1G")
    a = snapshot_vm(api, "local-lvm:vm-9999-a", 121)
    b = snapshot_vm(api, "local-lvm:vm-9999-b", 122)
    for vmid in (a, b):
        api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/snapshot", snapname="s1"))
    volume_a = sim.cluster.volume("local-lvm:vm-9999-a", "pve1")
    snapshot_file = volume_a.snapshots["s1"]["path"]
    api.wait(api.ok("DELETE", f"/nodes/pve1/qemu/{a}/snapshot/s1"))
    assert volume_a.snapshots == {} and not __import__("os").path.exists(snapshot_file)
    # LvmThinPlugin free_image removes snap_<volname>_* first: the VM snapshot is left naming nothing.
    volume_b = sim.cluster.volume("local-lvm:vm-9999-b", "pve1")
    api.wait(api.ok("DELETE", "/nodes/pve1/storage/local-lvm/content/local-lvm:vm-9999-b"))
    assert volume_b.snapshots == {}


def test_a_destroyed_holder_leaves_the_snapshots_of_a_volume_it_does_not_own(data_sim):
    """qemu-server destroy_vm frees only the volumes the VM owns: storage snapshots it took of
    another's volume stay, and must be deleted (DELETE …/snapshot) before the VM goes."""
    sim, api = data_sim
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-c", size="1G")
    vmid = snapshot_vm(api, "local-lvm:vm-9999-c", 123)
    api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/snapshot", snapname="s1"))
    api.wait(api.ok("DELETE", f"/nodes/pve1/qemu/{vmid}"))
    assert sim.cluster.volume("local-lvm:vm-9999-c", "pve1").snapshots.keys() == {"s1"}


def test_a_qcow2_image_with_snapshots_cannot_grow(data_sim):
    """QEMU block/qcow2.c qcow2_co_truncate refuses an image with internal snapshots."""
    sim, api = data_sim
    api.ok("POST", "/nodes/pve1/storage/local/content", vmid=9999, filename="vm-9999-q.qcow2", size="1G", format="qcow2")
    vmid = snapshot_vm(api, "local:9999/vm-9999-q.qcow2", 124)
    api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/snapshot", snapname="s1"))
    status = api.wait(api.ok("PUT", f"/nodes/pve1/qemu/{vmid}/resize", disk="scsi0", size="2G"))
    assert "Can't resize an image which has snapshots" in status["exitstatus"]


def test_a_qcow2_snapshot_of_an_image_a_running_vm_has_open_is_recorded_as_unsafe(data_sim):
    sim, api = data_sim
    api.ok("POST", "/nodes/pve1/storage/local/content", vmid=9999, filename="vm-9999-r.qcow2", size="1G", format="qcow2")
    volid = "local:9999/vm-9999-r.qcow2"
    attach(api, "scsi1", volid)  # VM 100 runs
    vmid = snapshot_vm(api, volid, 125)
    api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/snapshot", snapname="s1"))
    assert control(sim, "GET", "/_sim/state")["unsafe_snapshots"] == [{"volid": volid, "snapshot": "s1", "vmid": vmid}]


def test_a_clone_has_no_name_until_its_disks_are_copied(data_sim):
    """clone_vm's temporary config holds only `lock: clone`; the name comes with the final write."""
    sim, api = data_sim
    sim.cluster.task_seconds["import-per-gib"] = 0.5
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-n", size="1G")
    vmid = snapshot_vm(api, "local-lvm:vm-9999-n", 128)
    api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/snapshot", snapname="s1"))
    upid = api.ok("POST", f"/nodes/pve1/qemu/{vmid}/clone", newid=129, snapname="s1", full=1, name="late", description="d")
    assert api.ok("GET", "/nodes/pve1/qemu/129/config") == {"lock": "clone", "digest": api.ok("GET", "/nodes/pve1/qemu/129/config")["digest"]}
    assert api.wait(upid)["exitstatus"] == "OK"
    config = api.ok("GET", "/nodes/pve1/qemu/129/config")
    assert config["name"] == "late" and config["description"] == "d" and "lock" not in config


def test_a_full_copy_takes_time_in_proportion_to_its_bytes(data_sim):
    sim, api = data_sim
    sim.cluster.task_seconds["import-per-gib"] = 0.5
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-small", size="1G")
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-big", size="4G")
    upids = {}
    for vmid, name in ((126, "small"), (127, "big")):
        api.wait(api.ok("POST", "/nodes/pve1/qemu", vmid=vmid, name=f"copy-{name}"))
        upids[name] = api.ok("POST", f"/nodes/pve1/qemu/{vmid}/config", scsi0=f"local-lvm:0,import-from=local-lvm:vm-9999-{name}")
    tasks = {name: sim.cluster.tasks[upid] for name, upid in upids.items()}
    durations = {name: task.end - task.start for name, task in tasks.items()}
    assert durations["big"] - durations["small"] == pytest.approx(3 * 0.5, abs=0.05)


@pytest.mark.parametrize("name, valid", [("csi0123abcd", True), ("S1", True), ("a-b_c9d", True), ("1abc", False), ("a", False), ("a.b", False)])
def test_a_snapshot_name_is_a_pve_configid(sim, api, name, valid):
    """pve-common JSONSchema.pm $CONFIGID_RE: a letter, then letters, digits, '_' or '-' (any case)."""
    reply = api.call("POST", "/nodes/pve1/qemu/100/snapshot", snapname=name)
    assert (reply.status == 200) == valid, reply.reason


MOVER = "csi@pve!move=7d2e5f10-3c4b-4e8a-9f61-2b7c0d9e8a35"  # the CSI role plus VM.Migrate


def migrate(api, vmid, **params):
    from test_simulator import Client
    return Client(api.base, MOVER).call("POST", f"/nodes/pve1/qemu/{vmid}/migrate", **params)


def owning_vm(api, vmid, storage="local-lvm", node="pve1"):
    """A stopped VM with a disk of its own on `storage`, kept as unused0 (a settled copy VM)."""
    api.wait(api.ok("POST", f"/nodes/{node}/qemu", vmid=vmid, name=f"copy-{vmid}"))
    api.wait(api.ok("POST", f"/nodes/{node}/qemu/{vmid}/config", scsi0=f"{storage}:1"))
    api.wait(api.ok("POST", f"/nodes/{node}/qemu/{vmid}/config", delete="scsi0"))
    return api.ok("GET", f"/nodes/{node}/qemu/{vmid}/config")["unused0"]


def test_an_offline_migration_moves_the_vms_own_local_disks_with_their_data(data_sim):
    """QemuMigrate sync_offline_local_volumes: unused volumes go too, the data with them."""
    sim, api = data_sim
    volid = owning_vm(api, 140)
    write_volume(sim, volid, "moved intact")
    assert api.call("POST", "/nodes/pve1/qemu/140/migrate", target="pve2").status == 403  # the CSI role has no VM.Migrate
    upid = migrate(api, 140, target="pve2").data
    assert api.ok("GET", "/nodes/pve1/qemu/140/config")["lock"] == "migrate"
    assert api.wait(upid)["exitstatus"] == "OK"
    config = api.ok("GET", "/nodes/pve2/qemu/140/config")
    assert config["unused0"] == volid and "lock" not in config
    volume = sim.cluster.volume(volid, "pve2")
    with open(volume.path, "rb") as f:
        assert f.read(12).decode() == "moved intact"
    with pytest.raises(Exception):
        sim.cluster.volume(volid, "pve1")
    assert api.call("GET", "/nodes/pve1/qemu/140/config").status == 500


def test_a_name_taken_on_the_target_is_renamed_as_storage_migrate_allows(data_sim):
    sim, api = data_sim
    volid = owning_vm(api, 141)
    api.ok("POST", "/nodes/pve2/storage/local-lvm/content", vmid=141, filename=volid.split(":")[1], size="1G")
    api.wait(migrate(api, 141, target="pve2").data)
    moved = api.ok("GET", "/nodes/pve2/qemu/141/config")["unused0"]
    assert moved != volid and moved.startswith("local-lvm:vm-141-disk-")


@pytest.mark.parametrize("why, setup", [
    ("owned by other VM (owner = VM 9999)", "foreign"),
    ("non-migratable snapshot exists", "snapshot"),
])
def test_the_worker_refuses_what_qemu_servers_scan_refuses_and_nothing_moves(data_sim, why, setup):
    sim, api = data_sim
    if setup == "foreign":
        volid = make_disk(api, "vm-9999-foreign")
        vmid = snapshot_vm(api, volid, 142)
    else:
        vmid = 143
        volid = owning_vm(api, vmid)
        api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/config", scsi1=volid))
        api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/snapshot", snapname="s1"))
    status = api.wait(migrate(api, vmid, target="pve2").data)
    assert status["exitstatus"].startswith("can't migrate VM - check log") and why in status["exitstatus"]
    assert sim.cluster.volume(volid, "pve1") is not None
    assert "lock" not in api.ok("GET", f"/nodes/pve1/qemu/{vmid}/config")


def test_a_running_vm_needs_online_and_the_target_must_be_another_node(api):
    reply = migrate(api, 100, target="pve2")
    assert reply.status == 500 and reply.reason == "can't migrate running VM without --online"
    reply = migrate(api, 100, target="pve1")
    assert reply.status == 400 and "target is local node" in json.dumps(reply.json)
