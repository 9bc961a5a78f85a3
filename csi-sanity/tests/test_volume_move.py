"""`proxmox-csi move-volume` end to end (issue 16, item 2): a PVC's volume on
lvmthin moves from pve1 to pve2 of the simulator (real HTTP, volumes backed by
files, so the data is checked) with a token holding VM.Migrate, and the claim
is bound anew in a fake Kubernetes API. The move is killed with SIGKILL at
every step it reports and run again until it ends by itself: it must converge,
with the data in exactly one place and the claim's name and spec intact."""
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import grpc
import pytest

import csi_pb2
import csi_pb2_grpc
from conftest import DRIVER_BIN, ROOT

MOVER = ("csi@pve!move", "7d2e5f10-3c4b-4e8a-9f61-2b7c0d9e8a35")  # the default scenario's CSI role plus VM.Migrate
K8S_TOKEN = "kube-test-token"
DRIVER = "proxmox-csi"
GiB = 1 << 30
DATA = b"the claim's data, moved intact\n"


class FakeKubernetes:
    """PVs, PVCs, pods and VolumeAttachments in memory, as the API server answers them
    (merge-patch, 404, 409), and the PV controller's one effect that matters here: a claim
    made with volumeName binds to that PV. Deleting a claim whose PV says Delete is recorded:
    the provisioner would then delete the volume."""

    def __init__(self):
        self.pvs, self.pvcs, self.pods, self.attachments = {}, {}, {}, []
        self.volume_deletions = []
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self):
                if self.headers.get("Authorization") != f"Bearer {K8S_TOKEN}":
                    return self.reply(401, {"message": "Unauthorized"})
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    status, answer = fake.route(self.command, urllib.parse.urlparse(self.path).path, body)
                self.reply(status, answer)

            do_GET = do_POST = do_PATCH = do_DELETE = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, address: None  # a client killed mid-request is the point here
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, method, path, body):
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "persistentvolumes"]:
            return self.collection(self.pvs, method, parts[3] if len(parts) > 3 else None, body, cluster_scoped=True)
        if parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "persistentvolumeclaims":
            name = parts[5] if len(parts) > 5 else None
            return self.collection(self.pvcs, method, name and f"{parts[3]}/{name}", body, namespace=parts[3])
        if parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            return 200, {"items": [p for p in self.pods.values() if p["metadata"]["namespace"] == parts[3]]}
        if path == "/apis/storage.k8s.io/v1/volumeattachments":
            return 200, {"items": self.attachments}
        return 404, {"message": f"no route {method} {path}"}

    def collection(self, store, method, key, body, cluster_scoped=False, namespace=None):
        if key is None and method == "GET":
            return 200, {"items": list(store.values())}
        if key is None and method == "POST":
            name = body["metadata"]["name"]
            key = name if cluster_scoped else f"{namespace}/{name}"
            if key in store:
                return 409, {"message": f"{name} already exists"}
            body.setdefault("metadata", {})["uid"] = os.urandom(4).hex()
            store[key] = body
            if not cluster_scoped and body["spec"].get("volumeName") in self.pvs:  # the PV controller binds it
                body["status"] = {"phase": "Bound", "capacity": {"storage": body["spec"]["resources"]["requests"]["storage"]}}
                self.pvs[body["spec"]["volumeName"]]["spec"]["claimRef"]["uid"] = body["metadata"]["uid"]
            return 201, body
        if key not in store:
            return 404, {"message": f"{key} not found"}
        if method == "GET":
            return 200, store[key]
        if method == "PATCH":
            merge(store[key], body)
            return 200, store[key]
        if method == "DELETE":
            gone = store.pop(key)
            if not cluster_scoped:
                pv = self.pvs.get(gone["spec"].get("volumeName"))
                if pv and pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
                    self.volume_deletions.append(pv["spec"]["csi"]["volumeHandle"])
            return 200, gone
        return 405, {"message": method}

    def stop(self):
        self.server.shutdown()


def merge(target, patch):
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = value


@pytest.fixture
def bed(tmp_path, start_driver):
    port_file = tmp_path / "sim.port"
    sim = subprocess.Popen([sys.executable, "-m", "pvesim", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                            "--data-dir", str(tmp_path / "data"), "--auth-failure-delay", "0.1", "--exit-on-stdin-eof"],
                           cwd=ROOT / "simulator", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    for _ in range(200):
        if port_file.exists() and port_file.read_text():
            break
        time.sleep(0.025)
    url = f"http://127.0.0.1:{port_file.read_text()}"
    config = tmp_path / "config.yaml"
    config.write_text(f"clusters:\n  - name: sim\n    url: {url}\n    tokenID: \"{MOVER[0]}\"\n    tokenSecret: \"{MOVER[1]}\"\n")
    driver = start_driver("--mode", "controller", "--config", str(config))
    kube = FakeKubernetes()
    (tmp_path / "token").write_text(K8S_TOKEN)
    with grpc.insecure_channel(driver.target) as channel:
        volume = csi_pb2_grpc.ControllerStub(channel).CreateVolume(csi_pb2.CreateVolumeRequest(
            name="pvc-0a1b2c3d", capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
            volume_capabilities=[csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
                                                          access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))],
            parameters={"storage": "local-lvm"},
            accessibility_requirements=csi_pb2.TopologyRequirement(requisite=[csi_pb2.Topology(
                segments={"topology.kubernetes.io/region": "sim", "topology.kubernetes.io/zone": "pve1"})])), timeout=30).volume
    driver.stop()
    with open(tmp_path / "data" / "pve1-local-lvm" / volume.volume_id.split("/")[-1], "r+b") as f:
        f.write(DATA)
    kube.pvs["pvc-0a1b2c3d"] = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pvc-0a1b2c3d", "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER}, "uid": "u-pv"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Delete",
                 "storageClassName": "local", "volumeMode": "Filesystem",
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "apps", "name": "data-db-0", "uid": "u-pvc"},
                 "csi": {"driver": DRIVER, "volumeHandle": volume.volume_id, "fsType": "xfs",
                         "volumeAttributes": {"storage": "local-lvm"}},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["sim"]},
                     {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["pve1"]}]}]}}},
        "status": {"phase": "Bound"}}
    kube.pvcs["apps/data-db-0"] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-db-0", "namespace": "apps", "uid": "u-pvc", "labels": {"app": "db"},
                     "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                     "volume.kubernetes.io/selected-node": "k8s-node-1"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "storageClassName": "local", "volumeMode": "Filesystem", "volumeName": "pvc-0a1b2c3d"},
        "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}}
    yield {"config": config, "kube": kube, "token": tmp_path / "token", "data": tmp_path / "data", "volume": volume.volume_id,
           "url": url}
    kube.stop()
    sim.stdin.close()
    sim.wait(10)


# What the move reports as it starts each step, in the order the steps come.
STEPS = [("park", r"kubernetes: PersistentVolume \S+ to Retain"), ("copy", r"copy:"), ("copying", r"copying:"),
         ("migrate", r"migrate:"), ("migrating", r"migrating:"), ("new PV", r"kubernetes: PersistentVolume \S+ for "),
         ("claim again", r"kubernetes: claim .* made again"), ("old PV", r"kubernetes: PersistentVolume \S+ deleted"),
         ("delete", r"delete:"), ("done", r"done:")]


def step_of(line):
    return next((i for i, (_, pattern) in enumerate(STEPS) if re.match(pattern, line)), len(STEPS))


def move(bed, *extra):
    return [DRIVER_BIN, "move-volume", "--config", str(bed["config"]), "--to-node", "pve2", "--pvc", "apps/data-db-0",
            "--kube-api", bed["kube"].url, "--kube-token-file", str(bed["token"]), *extra]


def sim_state(bed):
    with urllib.request.urlopen(bed["url"] + "/_sim/state") as response:
        return json.loads(response.read())["data"]


def data_files(bed):
    """Every volume file that holds the claim's data, by node-storage/name."""
    found = []
    for path in bed["data"].rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                if f.read(len(DATA)) == DATA:
                    found.append(f"{path.parent.name}/{path.name}")
    return sorted(found)


def test_a_claim_in_use_is_refused_naming_its_pod_and_a_dry_run_changes_nothing(bed):
    kube = bed["kube"]
    kube.pods["db-0"] = {"metadata": {"name": "db-0", "namespace": "apps"}, "status": {"phase": "Running"},
                         "spec": {"nodeName": "k8s-node-1", "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data-db-0"}}]}}
    refused = subprocess.run(move(bed), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "pod apps/db-0 on node k8s-node-1" in refused.stderr, refused.stderr
    del kube.pods["db-0"]
    before = (json.dumps(kube.pvs, sort_keys=True), json.dumps(kube.pvcs, sort_keys=True), data_files(bed))
    dry = subprocess.run(move(bed, "--dry-run"), capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("kubernetes: patch PersistentVolume pvc-0a1b2c3d: persistentVolumeReclaimPolicy Retain")
    assert lines[1].startswith("kubernetes: delete PersistentVolumeClaim apps/data-db-0")
    assert lines[2].startswith("proxmox: copy " + bed["volume"]) and "migrate that VM offline to pve2" in lines[3]
    assert lines[4].startswith("kubernetes: create PersistentVolume pvc-0a1b2c3d-m")
    assert lines[-1] == "proxmox: delete the original " + bed["volume"]
    assert (json.dumps(kube.pvs, sort_keys=True), json.dumps(kube.pvcs, sort_keys=True), data_files(bed)) == before


def test_killed_at_every_step_the_move_converges_with_the_data_and_the_claim_intact(bed):
    kube = bed["kube"]
    assert data_files(bed) == [f"pve1-local-lvm/{bed['volume'].split('/')[-1]}"]
    interrupted, finished = [], None
    # Run k is killed at the first step it reports from the k-th on (a step reported is started,
    # maybe not done), so every step is interrupted once, then a run goes to the end.
    for k in range(len(STEPS) + 1):
        process = subprocess.Popen(move(bed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in process.stdout:
            seen.append(line.strip())
            if k < len(STEPS) and step_of(line) >= k:
                process.send_signal(signal.SIGKILL)
                interrupted.append(STEPS[step_of(line)][0])
                break
        process.wait(120)
        if process.returncode == 0:
            finished = seen
            break
        assert process.returncode == -signal.SIGKILL, process.stderr.read()
    assert finished is not None and finished[-1].startswith("moved: apps/data-db-0 is bound to sim/pve2/local-lvm/vm-")
    assert {"park", "copy", "migrate", "new PV", "claim again", "old PV", "delete"} <= set(interrupted), interrupted
    new_id = finished[-1].split(" is bound to ")[1].split(" on ")[0]

    # Proxmox: the data once, on pve2, in the volume the new id names; the original gone.
    assert data_files(bed) == [f"pve2-local-lvm/{new_id.split('/')[-1]}"]
    # Kubernetes: the claim by its name and spec, bound to a new PV with the new handle and zone.
    claim = kube.pvcs["apps/data-db-0"]
    assert claim["metadata"]["labels"] == {"app": "db"}
    assert "volume.kubernetes.io/selected-node" not in claim["metadata"]["annotations"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi" and claim["status"]["phase"] == "Bound"
    pv = kube.pvs[claim["spec"]["volumeName"]]
    assert list(kube.pvs) == [claim["spec"]["volumeName"]], "the old PV is gone"
    assert pv["spec"]["csi"]["volumeHandle"] == new_id and pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    zone = [e for e in pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"]
            if e["key"] == "topology.kubernetes.io/zone"][0]
    assert zone["values"] == ["pve2"]
    assert pv["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]
    assert kube.volume_deletions == [], "no DeleteVolume was ever owed for a volume of this claim"
    # Nothing left over: no VM locked, no second copy, and a rerun has nothing to do.
    state = sim_state(bed)
    assert not [vmid for vmid, vm in state["vms"].items() if vm["config"].get("lock")]
    assert not any(key.startswith("proxmox-csi.move/") for key in pv["metadata"]["annotations"]), "the move's notes are gone"
    again = subprocess.run(move(bed), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == finished[-1], again.stdout + again.stderr
    assert data_files(bed) == [f"pve2-local-lvm/{new_id.split('/')[-1]}"]
    # And back: a claim moves as often as it is asked to.
    back = subprocess.run(move(bed)[:5] + ["pve1"] + move(bed)[6:], capture_output=True, text=True, timeout=120)
    assert back.returncode == 0, back.stdout + back.stderr
    assert back.stdout.splitlines()[-1].startswith("moved: apps/data-db-0 is bound to sim/pve1/local-lvm/vm-")
    assert [f.split("/")[0] for f in data_files(bed)] == ["pve1-local-lvm"] and len(kube.pvs) == 1
