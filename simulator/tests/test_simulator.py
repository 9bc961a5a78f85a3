"""Pins the simulator's Proxmox behaviour (facts from shared PROXMOX-API.md)."""
import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pvesim.__main__ import DEFAULT_SCENARIO, load_scenario  # noqa: E402
from pvesim.server import Simulator, serve  # noqa: E402

TOKEN = "csi@pve!csi=5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21"
AUDIT = "audit@pve!ro=0c3c4f4e-1f7b-4a53-8a3e-5b9a2e1d7c40"


class Reply:
    def __init__(self, status, reason, body, headers):
        self.status, self.reason, self.raw, self.headers = status, reason, body, headers
        self.json = json.loads(body) if body else None

    @property
    def data(self):
        return self.json["data"]


class Client:
    def __init__(self, base, token=TOKEN):
        self.base = base
        self.token = token
        self.cookie = None
        self.csrf = None

    def call(self, method, path, **params):
        data = None
        url = self.base + "/api2/json" + path
        encoded = urllib.parse.urlencode(params)
        if method in ("GET", "DELETE"):
            url += ("?" + encoded) if encoded else ""
        else:
            data = encoded.encode()
        request = urllib.request.Request(url, data=data, method=method)
        if self.token:
            request.add_header("Authorization", f"PVEAPIToken={self.token}")
        if self.cookie:
            request.add_header("Cookie", f"PVEAuthCookie={urllib.parse.quote(self.cookie)}")
        if self.csrf:
            request.add_header("CSRFPreventionToken", self.csrf)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, response.reason, response.read(), response.headers)
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.reason, error.read(), error.headers)

    def ok(self, method, path, **params):
        reply = self.call(method, path, **params)
        assert reply.status == 200, (reply.status, reply.reason, reply.raw)
        return reply.data

    def wait(self, upid, node="pve1"):
        for _ in range(2000):
            status = self.ok("GET", f"/nodes/{node}/tasks/{urllib.parse.quote(upid, safe='')}/status")
            if status["status"] == "stopped":
                return status
            time.sleep(0.005)
        raise TimeoutError(upid)


@pytest.fixture
def sim():
    cluster, schema, users, tokens = load_scenario(DEFAULT_SCENARIO, {}, 0.01)
    simulator = Simulator(cluster, schema, tokens, users, auth_failure_delay=0.2, ticket_lifetime=2)
    server = serve(simulator, "127.0.0.1", 0)
    simulator.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield simulator
    server.shutdown()


@pytest.fixture
def api(sim):
    return Client(sim.base)


def test_each_answer_leaves_in_one_write_as_pveproxy_sends_it(sim):
    # pve-http-server AnyEvent.pm `response`: headers and content in one push_write. Written
    # apart, the body waits on the client's delayed ACK (40 ms per answer on a kept-alive connection).
    import select
    import socket
    host, port = sim.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        request = (f"GET /api2/json/version HTTP/1.1\r\nHost: {host}\r\n"
                   f"Authorization: PVEAPIToken={TOKEN}\r\n\r\n").encode()
        for _ in range(5):
            conn.sendall(request)
            assert select.select([conn], [], [], 5)[0], "no answer"
            first = conn.recv(65536)  # what the first segment to arrive holds
            head, _, body = first.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            assert len(body) == length, first


# ------------------------------------------------------------------ auth

def test_token_auth_and_envelope(api):
    assert api.ok("GET", "/version")["version"].startswith("9.")


def test_bad_token_is_401_with_reason_in_status_line_empty_body_and_delay(sim):
    started = time.time()
    reply = Client(sim.base, token="csi@pve!csi=wrong").call("GET", "/version")
    assert reply.status == 401
    assert reply.reason == "authentication failure"
    assert reply.raw == b""
    assert time.time() - started >= 0.2


def test_token_secret_is_split_at_the_last_equals_sign(sim):
    assert Client(sim.base, token="csi@pve!csi=x=5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21").call("GET", "/version").status == 401


def test_ticket_auth_needs_csrf_for_writes_and_can_be_renewed(sim):
    anon = Client(sim.base, token=None)
    login = anon.ok("POST", "/access/ticket", username="csi@pve", password="sim-csi-password")
    user = Client(sim.base, token=None)
    user.cookie = login["ticket"]
    assert user.call("GET", "/version").status == 200
    write = dict(vmid=9999, filename="vm-9999-t", size="1M")
    assert user.call("POST", "/nodes/pve1/storage/local-lvm/content", **write).status == 401
    user.csrf = login["CSRFPreventionToken"]
    assert user.call("POST", "/nodes/pve1/storage/local-lvm/content", **write).status == 200
    renewed = anon.ok("POST", "/access/ticket", username="csi@pve", password=login["ticket"])
    assert renewed["ticket"]


def test_expired_ticket_is_refused(sim):
    login = Client(sim.base, token=None).ok("POST", "/access/ticket", username="csi@pve", password="sim-csi-password")
    user = Client(sim.base, token=None)
    user.cookie = login["ticket"]
    time.sleep(2.1)
    assert user.call("GET", "/version").status == 401


def test_wrong_password_is_401(sim):
    assert Client(sim.base, token=None).call("POST", "/access/ticket", username="csi@pve", password="x").status == 401


def test_missing_privilege_is_403_naming_path_and_privilege(sim):
    reply = Client(sim.base, token=AUDIT).call("POST", "/nodes/pve1/storage/local-lvm/content",
                                                vmid=9999, filename="vm-9999-x", size="1G")
    assert reply.status == 403
    assert reply.reason == "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)"


# ------------------------------------------------------------------ schema

@pytest.mark.parametrize("params, field, message", [
    (dict(vmid=9999, filename="vm-9999-a", size="1T"), "size", "value does not match the regex pattern"),
    (dict(vmid=99, filename="vm-99-a", size="1G"), "vmid", "value must have a minimum value of 100"),
    (dict(vmid="abc", filename="vm-1-a", size="1G"), "vmid", "type check ('integer') failed - got 'abc'"),
    (dict(vmid=9999, filename="vm-9999-a", size="1G", color="red"), "color",
     "property is not defined in schema and the schema does not allow additional properties"),
    (dict(vmid=9999, size="1G"), "filename", "property is missing and it is not optional"),
])
def test_parameters_are_verified_like_proxmox(api, params, field, message):
    reply = api.call("POST", "/nodes/pve1/storage/local-lvm/content", **params)
    assert reply.status == 400 and reply.reason == "Parameter verification failed."
    assert reply.json["errors"][field] == message


def test_unknown_path_is_501(api):
    assert api.call("GET", "/nodes/pve1/nothing-here").status == 501


def test_disk_option_values_are_checked(api):
    reply = api.call("POST", "/nodes/pve1/qemu/100/config", scsi1="local-lvm:1,wwn=nothex")
    assert reply.status == 400 and "wwn" in reply.json["errors"]["scsi1"]


# ------------------------------------------------------------------ volumes

@pytest.mark.parametrize("storage, name, volid_or_error", [
    ("local-lvm", "vm-9999-pvc-1", "local-lvm:vm-9999-pvc-1"),
    ("local-lvm", "vm-100-pvc-1", "illegal name 'vm-100-pvc-1' - should be 'vm-9999-*'"),
    ("local-lvm", "pvc-1", "illegal name 'pvc-1' - should be 'vm-9999-*'"),
    ("tank", "vm-9999-pvc-1", "tank:vm-9999-pvc-1"),
    ("ceph", "vm-9999-pvc-1", "ceph:vm-9999-pvc-1"),
    ("vg0", "vm-5-pvc-1", "vg0:vm-5-pvc-1"),
    ("local", "pvc-1.raw", "local:9999/pvc-1.raw"),
    ("nfs", "pvc-1.qcow2", "nfs:9999/pvc-1.qcow2"),
    ("local", "pvc-1", "illegal name 'pvc-1' - should be 'vm-9999-*'"),
])
def test_each_storage_type_has_its_naming_rules(api, storage, name, volid_or_error):
    reply = api.call("POST", f"/nodes/pve1/storage/{storage}/content", vmid=9999, filename=name, size="1G")
    if ":" in volid_or_error:
        assert reply.status == 200 and reply.data == volid_or_error
    else:
        assert reply.status == 500 and reply.reason == volid_or_error


def test_sizes_bare_number_is_kib_and_lvm_rounds_to_extents(api):
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-kib", size="1000")
    api.ok("POST", "/nodes/pve1/storage/local/content", vmid=9999, filename="kib.raw", size="1000")
    lvm = api.ok("GET", "/nodes/pve1/storage/local-lvm/content/local-lvm:vm-9999-kib")
    raw = api.ok("GET", "/nodes/pve1/storage/local/content/" + urllib.parse.quote("local:9999/kib.raw", safe=""))
    assert raw["size"] == 1000 * 1024
    assert lvm["size"] == 4 * 1024 * 1024


def test_duplicates_and_capacity_are_refused(api):
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-a", size="1G")
    again = api.call("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-a", size="1G")
    assert again.status == 500 and "already exists" in again.reason
    huge = api.call("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-b", size="100000G")
    assert huge.status == 500 and "not enough free space" in huge.reason


def test_local_storages_are_separate_per_node_and_shared_ones_are_not(api):
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-a", size="1G")
    api.ok("POST", "/nodes/pve1/storage/ceph/content", vmid=9999, filename="vm-9999-a", size="1G")
    on_pve2 = [v["volid"] for v in api.ok("GET", "/nodes/pve2/storage/local-lvm/content")]
    assert "local-lvm:vm-9999-a" not in on_pve2
    assert "ceph:vm-9999-a" in [v["volid"] for v in api.ok("GET", "/nodes/pve2/storage/ceph/content")]
    assert api.call("GET", "/nodes/pve2/storage/vg0/status").status == 500


def test_the_storage_api_deletes_a_volume_a_vm_still_uses(api):
    # pve-storage's content DELETE (API2/Storage/Content.pm delete → vdisk_free)
    # checks no owner guest; only the web UI (ImageView.js) refuses. The driver
    # must never delete a volume a config references.
    api.wait(api.ok("DELETE", "/nodes/pve1/storage/local-lvm/content/local-lvm:vm-100-disk-0"))
    assert "local-lvm:vm-100-disk-0" not in [v["volid"] for v in api.ok("GET", "/nodes/pve1/storage/local-lvm/content")]


def test_delete_is_a_task_or_null_within_delay(api):
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-a", size="1G")
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-b", size="1G")
    upid = api.ok("DELETE", "/nodes/pve1/storage/local-lvm/content/local-lvm:vm-9999-a")
    assert upid.startswith("UPID:pve1:") and ":imgdel:" in upid
    assert api.wait(upid)["exitstatus"] == "OK"
    assert api.ok("DELETE", "/nodes/pve1/storage/local-lvm/content/local-lvm:vm-9999-b", delay=5) is None
    assert api.ok("GET", "/nodes/pve1/storage/local-lvm/content", vmid=9999) == []


# ------------------------------------------------------------------ VM config

def attach(api, key, volid, vmid=100, **extra):
    value = ",".join([volid] + [f"{k}={v}" for k, v in extra.items()])
    return api.wait(api.ok("POST", f"/nodes/pve1/qemu/{vmid}/config", **{key: value}))


def test_hotplug_rewrites_the_value_and_changes_the_digest(api):
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-a", size="2G")
    before = api.ok("GET", "/nodes/pve1/qemu/100/config")["digest"]
    assert attach(api, "scsi1", "local-lvm:vm-9999-a", serial="pvc-a", discard="on")["exitstatus"] == "OK"
    config = api.ok("GET", "/nodes/pve1/qemu/100/config")
    assert config["scsi1"] == "local-lvm:vm-9999-a,discard=on,serial=pvc-a,size=2G"
    assert config["digest"] != before


def test_stale_digest_is_refused_synchronously(api):
    reply = api.call("POST", "/nodes/pve1/qemu/100/config", digest="0" * 40, description="x")
    assert reply.status == 500 and reply.reason == "checksum mismatch (file change by other user?)"


def test_locked_vm_refuses_changes(sim, api):
    sim.cluster.vms[100].config["lock"] = "backup"
    reply = api.call("POST", "/nodes/pve1/qemu/100/config", description="x")
    assert reply.status == 500 and reply.reason == "VM is locked (backup)"


def test_serial_longer_than_20_bytes_is_refused(api):
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-a", size="1G")
    reply = api.call("POST", "/nodes/pve1/qemu/100/config", scsi1="local-lvm:vm-9999-a,serial=" + "x" * 21)
    assert reply.status == 400


def test_detach_keeps_owned_volumes_as_unused_and_drops_foreign_ones(api):
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-a", size="1G")
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=100, filename="vm-100-own", size="1G")
    attach(api, "scsi1", "local-lvm:vm-9999-a")
    attach(api, "scsi2", "local-lvm:vm-100-own")
    api.wait(api.ok("POST", "/nodes/pve1/qemu/100/config", delete="scsi1,scsi2"))
    config = api.ok("GET", "/nodes/pve1/qemu/100/config")
    assert "scsi1" not in config and "scsi2" not in config
    assert [v for k, v in config.items() if k.startswith("unused")] == ["local-lvm:vm-100-own"]


def test_new_disk_and_import_from_allocate_vm_owned_volumes(api):
    attach(api, "scsi3", "local-lvm:1")
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-src", size="3G")
    attach(api, "scsi4", "local-lvm:0", **{"import-from": "local-lvm:vm-9999-src"})
    config = api.ok("GET", "/nodes/pve1/qemu/100/config")
    assert config["scsi3"] == "local-lvm:vm-100-disk-1,size=1G"
    assert config["scsi4"] == "local-lvm:vm-100-disk-2,size=3G"


def test_config_changes_of_one_vm_are_serialized(sim, api):
    sim.cluster.task_seconds["qmconfig"] = 0.3
    upids = []
    threads = [threading.Thread(target=lambda i=i: upids.append(
        api.ok("POST", "/nodes/pve1/qemu/100/config", description=f"d{i}"))) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    first, second = sorted((sim.cluster.tasks[u] for u in upids), key=lambda t: t.start)
    assert second.start >= first.end - 0.01


def test_a_config_change_takes_longer_for_each_disk_it_hot_plugs(sim, api):
    sim.cluster.task_seconds.update({"qmconfig": 0.2, "qmconfig-each": 0.1})
    for name in ("a", "b", "c"):
        api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename=f"vm-9999-{name}", size="1G")
    one = sim.cluster.tasks[api.ok("POST", "/nodes/pve1/qemu/100/config", scsi1="local-lvm:vm-9999-a")]
    three = sim.cluster.tasks[api.ok("POST", "/nodes/pve1/qemu/100/config", scsi2="local-lvm:vm-9999-b",
                                     scsi3="local-lvm:vm-9999-c", description="not a disk")]
    plain = sim.cluster.tasks[api.ok("POST", "/nodes/pve1/qemu/100/config", description="d")]
    assert round(one.end - one.start, 3) == 0.2
    assert round(three.end - three.start, 3) == 0.3
    assert round(plain.end - plain.start, 3) == 0.2


def test_resize_grows_and_refuses_to_shrink_as_task_errors(api):
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-a", size="1G")
    attach(api, "scsi1", "local-lvm:vm-9999-a")
    assert api.wait(api.ok("PUT", "/nodes/pve1/qemu/100/resize", disk="scsi1", size="+1G"))["exitstatus"] == "OK"
    assert api.ok("GET", "/nodes/pve1/qemu/100/config")["scsi1"].endswith("size=2G")
    assert api.wait(api.ok("PUT", "/nodes/pve1/qemu/100/resize", disk="scsi1", size="1G"))["exitstatus"] == \
        "shrinking disks is not supported"
    assert api.wait(api.ok("PUT", "/nodes/pve1/qemu/100/resize", disk="scsi9", size="+1G"))["exitstatus"] == \
        "disk 'scsi9' does not exist"


def test_task_status_has_upid_fields_and_unknown_task_is_400(api):
    upid = api.ok("POST", "/nodes/pve1/qemu/100/config", description="x")
    status = api.wait(upid)
    assert status["type"] == "qmconfig" and status["id"] == "100" and status["user"] == "csi@pve!csi"
    assert upid.split(":")[1] == "pve1" and len(upid.split(":")[2]) == 8
    bogus = upid.replace("qmconfig", "qmstart")
    assert api.call("GET", f"/nodes/pve1/tasks/{urllib.parse.quote(bogus, safe='')}/status").status == 400


def test_reassign_renames_the_volume_to_the_target_vm(sim, api):
    api.ok("POST", "/nodes/pve1/qemu", vmid=9999, name="csi-holder")
    api.wait(api.ok("GET", "/cluster/nextid") and api.ok("POST", "/nodes/pve1/qemu/100/config", description="x"))
    time.sleep(0.05)
    api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=100, filename="vm-100-moving", size="1G")
    api.wait(api.ok("POST", "/nodes/pve1/qemu/100/config", unused5="local-lvm:vm-100-moving"))
    upid = api.ok("POST", "/nodes/pve1/qemu/100/move_disk", disk="unused5", **{"target-vmid": 9999,
                                                                                 "target-disk": "scsi0"})
    assert api.wait(upid)["exitstatus"] == "OK"
    assert api.ok("GET", "/nodes/pve1/qemu/9999/config")["scsi0"].startswith("local-lvm:vm-9999-disk-")


def test_snapshots_need_capable_storage_and_clones_from_snapshots_need_copyable_storage(api):
    api.ok("POST", "/nodes/pve1/qemu", vmid=500, name="h1", scsi0="local-lvm:1")
    api.ok("POST", "/nodes/pve1/qemu", vmid=501, name="h2", scsi0="vg0:1")
    api.ok("POST", "/nodes/pve1/qemu", vmid=502, name="h3", scsi0="tank:1")
    time.sleep(0.1)
    assert api.wait(api.ok("POST", "/nodes/pve1/qemu/500/snapshot", snapname="s1"))["exitstatus"] == "OK"
    assert api.wait(api.ok("POST", "/nodes/pve1/qemu/501/snapshot", snapname="s1"))["exitstatus"] == \
        "snapshot feature is not available"
    assert api.wait(api.ok("POST", "/nodes/pve1/qemu/502/snapshot", snapname="s1"))["exitstatus"] == "OK"
    ok = api.wait(api.ok("POST", "/nodes/pve1/qemu/500/clone", newid=600, snapname="s1", full=1))
    assert ok["exitstatus"] == "OK"
    failed = api.wait(api.ok("POST", "/nodes/pve1/qemu/502/clone", newid=601, snapname="s1", full=1))
    # API2/Qemu.pm clone_vm: "Full clone feature is not supported for a snapshot of '<volid>' (<key>)".
    assert failed["exitstatus"] == "Full clone feature is not supported for a snapshot of 'tank:vm-502-disk-0' (scsi0)"
    assert api.call("GET", "/nodes/pve1/qemu/601/config").status == 500


# ------------------------------------------------------------------ faults and log

def test_a_volume_in_two_vms_at_once_is_recorded(sim, api):
    api.ok("POST", "/nodes/pve1/storage/ceph/content", vmid=9999, filename="vm-9999-shared", size="1G")
    attach(api, "scsi5", "ceph:vm-9999-shared", vmid=100)
    assert control(sim, "GET", "/_sim/state")["double_attachments"] == []
    attach(api, "scsi5", "ceph:vm-9999-shared", vmid=102)
    assert control(sim, "GET", "/_sim/state")["double_attachments"] == [{"volume": "ceph:vm-9999-shared", "vms": [100, 102]}]


def test_a_stopped_vms_reference_to_a_volume_in_use_is_a_shared_reference_not_a_double_attachment(sim, api):
    api.ok("POST", "/nodes/pve1/storage/ceph/content", vmid=9999, filename="vm-9999-ref", size="1G")
    attach(api, "scsi5", "ceph:vm-9999-ref", vmid=100)
    api.wait(api.ok("POST", "/nodes/pve1/qemu", vmid=140, name="stopped-holder"))
    attach(api, "scsi0", "ceph:vm-9999-ref", vmid=140)
    state = control(sim, "GET", "/_sim/state")
    assert state["double_attachments"] == []
    assert state["shared_references"] == [{"volume": "ceph:vm-9999-ref", "vms": [100, 140], "running": [100]}]


def control(sim, method, path, **params):
    query = urllib.parse.urlencode(params)
    if method == "GET":
        request = urllib.request.Request(sim.base + path + (f"?{query}" if query else ""), method=method)
    else:
        request = urllib.request.Request(sim.base + path, data=query.encode(), method=method)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["data"]


def test_injected_faults_answer_once_then_stop(sim, api):
    control(sim, "PUT", "/_sim/faults", rules=json.dumps([{"path": "^/version$", "status": 596, "count": 1}]))
    assert control(sim, "GET", "/_sim/faults")[0]["remaining"] == 1
    assert api.call("GET", "/version").status == 596
    assert control(sim, "GET", "/_sim/faults")[0]["remaining"] == 0
    assert api.call("GET", "/version").status == 200


def test_a_late_answer_says_what_was_true_when_it_was_served(sim, api):
    control(sim, "PUT", "/_sim/faults", rules=json.dumps([{"method": "GET", "path": "/qemu/100/config$",
                                                           "reply_delay_ms": 600, "count": 1}]))
    late = {}
    reader = threading.Thread(target=lambda: late.update(api.ok("GET", "/nodes/pve1/qemu/100/config")))
    reader.start()
    deadline = time.monotonic() + 10
    while control(sim, "GET", "/_sim/faults")[0]["remaining"] != 0:  # the read is being served
        assert time.monotonic() < deadline
        time.sleep(0.01)
    api.ok("PUT", "/nodes/pve1/qemu/100/config", description="changed meanwhile")
    reader.join()
    assert late.get("description") != "changed meanwhile"
    assert api.ok("GET", "/nodes/pve1/qemu/100/config")["description"] == "changed meanwhile"


def test_a_request_whose_client_left_is_still_logged(sim, api):
    control(sim, "DELETE", "/_sim/log")
    control(sim, "PUT", "/_sim/faults", rules=json.dumps([{"path": "^/version$", "reply_delay_ms": 300, "count": 1}]))
    with pytest.raises(Exception):
        urllib.request.urlopen(sim.base + "/api2/json/version", timeout=0.1)
    deadline = time.monotonic() + 10
    while not control(sim, "GET", "/_sim/log") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(e["path"], e["status"]) for e in control(sim, "GET", "/_sim/log")] == [("/api2/json/version", 401)]


def test_request_log_records_calls_and_redacts_passwords(sim, api):
    api.call("GET", "/version")
    Client(sim.base, token=None).call("POST", "/access/ticket", username="csi@pve", password="sim-csi-password")
    # Each handler thread records its request once its answer is written, so two calls from two
    # connections may be recorded in either order, and the last a moment after its answer.
    for _ in range(100):
        log = control(sim, "GET", "/_sim/log")
        if len(log) >= 2:
            break
        time.sleep(0.02)
    assert sorted((e["method"], e["path"], e["status"]) for e in log) == [("GET", "/api2/json/version", 200),
                                                                          ("POST", "/api2/json/access/ticket", 200)]
    assert "sim-csi-password" not in json.dumps(log)


# ------------------------------------------------------------------ local mode

def loop_devices_usable():
    import os
    import shutil
    return os.geteuid() == 0 and shutil.which("losetup") and os.path.exists("/dev/loop-control")


@pytest.mark.skipif(not loop_devices_usable(), reason="local mode needs root and loop devices")
def test_local_mode_turns_hotplugged_disks_into_loop_devices(tmp_path):
    import os
    from pvesim.localmode import LocalHost
    cluster, schema, users, tokens = load_scenario(DEFAULT_SCENARIO, {}, 0.01, data_dir=str(tmp_path / "data"))
    local = LocalHost(100, str(tmp_path / "sys"), cluster.vms[100].config["smbios1"] + ",serial=dm0tMTAw,base64=1")
    cluster.listeners.append(local)
    dmi = tmp_path / "sys" / "class" / "dmi" / "id"
    assert "uuid=" + (dmi / "product_uuid").read_text().strip() in cluster.vms[100].config["smbios1"]
    assert (dmi / "product_serial").read_text().strip() == "vm-100"
    simulator = Simulator(cluster, schema, tokens, users, auth_failure_delay=0.1)
    server = serve(simulator, "127.0.0.1", 0)
    api = Client(f"http://127.0.0.1:{server.server_address[1]}")
    try:
        api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-blk", size="64M")
        api.ok("POST", "/nodes/pve1/storage/local-lvm/content", vmid=9999, filename="vm-9999-scsi", size="64M")
        attach(api, "virtio1", "local-lvm:vm-9999-blk", serial="pvc-blk-0001")
        attach(api, "scsi1", "local-lvm:vm-9999-scsi", serial="pvc-scsi-0001", wwn="0x5056432d49443031")
        entries = {e: tmp_path / "sys" / "block" / e for e in os.listdir(tmp_path / "sys" / "block")}
        assert len(entries) == 2
        by_serial = {}
        for name, entry in entries.items():
            if (entry / "serial").exists():
                by_serial[(entry / "serial").read_text().strip()] = name
            else:
                page = (entry / "device" / "vpd_pg80").read_bytes()
                assert page[:4] == bytes([0, 0x80, 0, len(page) - 4])
                assert (entry / "device" / "wwid").read_text().strip() == "naa.5056432d49443031"
                by_serial[page[4:].decode()] = name
        assert set(by_serial) == {"pvc-blk-0001", "pvc-scsi-0001"}
        blk = by_serial["pvc-blk-0001"]
        assert os.path.exists(f"/dev/{blk}")
        assert (entries[blk] / "size").read_text().strip() == str(64 * 1024 * 1024 // 512)

        api.wait(api.ok("PUT", "/nodes/pve1/qemu/100/resize", disk="virtio1", size="128M"))
        assert (entries[blk] / "size").read_text().strip() == str(128 * 1024 * 1024 // 512)
        assert open(f"/sys/block/{blk}/size").read().strip() == str(128 * 1024 * 1024 // 512)

        api.wait(api.ok("POST", "/nodes/pve1/qemu/100/config", delete="virtio1,scsi1"))
        assert os.listdir(tmp_path / "sys" / "block") == []
    finally:
        local.close()
        server.shutdown()


def test_copies_carry_data_extents_and_keep_holes(tmp_path):
    from types import SimpleNamespace
    from pvesim.api import copy_data
    source, target = tmp_path / "src", tmp_path / "dst"
    for path in (source, target):
        with open(path, "wb") as f:
            f.truncate(64 << 20)
    with open(source, "r+b") as f:
        f.write(b"head")
        f.seek(40 << 20)
        f.write(b"middle" * 1000)
    copy_data(SimpleNamespace(path=str(source)), SimpleNamespace(path=str(target)))
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_blocks * 512 < 1 << 20, "holes stay holes"
