"""Many volume lifecycles at once against the simulator, as the CSI sidecars
drive them: create → publish → unpublish → delete, plus snapshot → restore →
delete for a share, every call retried the way the sidecars retry (each
attempt with a deadline; any failure but INVALID_ARGUMENT / ALREADY_EXISTS
requeued with exponential backoff).

Reports wall time, p50/p99 per RPC, Proxmox calls per lifecycle, and the ratio
of wall time to the lower bound set by per-VM serialization (the config-task
time of the busiest VM). With --faults, the simulator injects errors, lock
holds and slow tasks. Afterwards a leak check finds anything driver-made that
Proxmox still holds (every lifecycle deleted what it made, so there should be
nothing), and the simulator reports every moment a volume was in two VMs'
configs at once. Run by scripts/benchmark-load.
"""
import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "csi-sanity" / "_gen"))
import grpc  # noqa: E402
from grpc import aio  # noqa: E402

import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402
from benchlib import wait_for_text  # noqa: E402

GiB = 1 << 30
# Task durations seen on small Proxmox clusters (as in benchmark-controller);
# a config change that hot-plugs several disks takes 0.1 s more for each
# disk beyond the first (one QMP drive_add + device_add each).
TASKS = {"qmconfig": 0.5, "qmconfig-each": 0.1, "resize": 1.0, "qmcreate": 3.0, "qmdestroy": 1.0, "imgdel": 0.5}
# The sidecars requeue a failed operation whatever the code, with backoff; only
# answers that cannot change on a retry end a lifecycle here.
FINAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS}
SHARED_STORAGES = {"ceph", "nfs"}  # the default scenario's storages every Proxmox node sees
DISK_KEY = re.compile(r"(scsi|virtio|sata|ide)(\d+)$")  # as the simulator counts hot-plugged disks
WRITER = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
                                  access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))


def scenario(vms, path):
    """The default scenario with `vms` Kubernetes-node VMs spread over the two Proxmox nodes."""
    spec = json.loads((ROOT / "simulator" / "scenarios" / "default.json").read_text())
    spec["vms"] = [{"vmid": 100 + i, "node": "pve1" if i % 2 == 0 else "pve2", "name": f"k8s-node-{i + 1}",
                    "status": "running", "disks": {"scsi0": "local-lvm:32"}} for i in range(vms)]
    for storage in spec["storages"]:
        if storage["id"] == "ceph":
            storage["total"] = "65536G"
    path.write_text(json.dumps(spec))


class Sidecar:
    """Calls with a per-attempt timeout and the sidecars' retry-with-backoff,
    each sidecar with its pool of workers (`--worker-threads`): csi-provisioner
    creates and deletes volumes, csi-attacher attaches, csi-snapshotter snapshots."""

    POOLS = {"CreateVolume": "provisioner", "DeleteVolume": "provisioner", "ControllerPublishVolume": "attacher",
             "ControllerUnpublishVolume": "attacher", "CreateSnapshot": "snapshotter", "DeleteSnapshot": "snapshotter",
             "ControllerExpandVolume": "resizer"}

    def __init__(self, stub, timeout, stats, workers):
        self.stub, self.timeout, self.stats = stub, timeout, stats
        self.pools = {name: asyncio.Semaphore(count) for name, count in workers.items()}

    async def call(self, name, request, trace=None):
        delay, attempts = 0.5, 0
        started = time.perf_counter()
        while True:
            attempts += 1
            try:
                async with self.pools[self.POOLS[name]]:
                    # The driver's time: from the moment a sidecar worker sends the call.
                    sent = time.perf_counter()
                    response = await getattr(self.stub, name)(request, timeout=self.timeout)
                    done = time.perf_counter()
                    self.stats.setdefault(name, []).append(done - sent)
                    self.stats.setdefault("_spans", []).append((name, sent, done))
                # With the sidecar's queue for a worker and every retry: what the user waits.
                self.stats.setdefault("_overall " + name, []).append(time.perf_counter() - started)
                if trace is not None:  # the lifecycle's own timeline: asked, sent (a worker free), answered
                    trace.append((name, started, sent, done))
                if attempts > 1:
                    self.stats.setdefault("_retries", []).append(attempts - 1)
                return response
            except aio.AioRpcError as error:
                key = f"{name} {error.code().name}"
                self.stats.setdefault("_errors", {}).setdefault(key, 0)
                self.stats["_errors"][key] += 1
                if error.code() in FINAL or attempts >= 60:
                    raise
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 8)


def placement(storage, index, vms):
    """A volume on a local storage (lvmthin, zfspool, dir) must sit on the Proxmox node of
    the VM it is attached to: csi-provisioner asks for that node's topology (WaitForFirstConsumer)."""
    if storage in SHARED_STORAGES:
        return None
    zone = "pve1" if (index % vms) % 2 == 0 else "pve2"  # as scenario() places the VMs
    segments = {"topology.kubernetes.io/region": "sim", "topology.kubernetes.io/zone": zone}
    topology = csi_pb2.Topology(segments=segments)
    return csi_pb2.TopologyRequirement(requisite=[topology], preferred=[topology])


async def lifecycle(index, sidecar, vms, storage, with_snapshot, with_expansion, failures, node_slots, sim_url, held_after_ok, trace):
    node = f"k8s-node-{index % vms + 1}"
    name = f"pvc-{uuid.uuid4()}"
    where = placement(storage, index, vms)

    async def call(name, request):  # each call also goes on this lifecycle's timeline
        return await sidecar.call(name, request, trace)

    try:
        volume = (await call("CreateVolume", csi_pb2.CreateVolumeRequest(
            name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=GiB), volume_capabilities=[WRITER],
            parameters={"storage": storage}, accessibility_requirements=where))).volume
        # The scheduler places no more volumes on a node than its CSINode limit.
        async with node_slots[index % vms]:
            await call("ControllerPublishVolume", csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume.volume_id, node_id=node, volume_capability=WRITER, volume_context=volume.volume_context))
            await call("ControllerUnpublishVolume", csi_pb2.ControllerUnpublishVolumeRequest(
                volume_id=volume.volume_id, node_id=node))
            # OK must mean detached: no VM's current config or pending change holds the disk.
            volid = f"{storage}:" + volume.volume_id.split("/")[-1]
            holders = await asyncio.get_running_loop().run_in_executor(
                None, sim, sim_url, "/_sim/holders?volid=" + urllib.parse.quote(volid))
            if holders:
                held_after_ok.append({"volume": volid, "vms": holders})
        if with_expansion:
            # Detached: the driver grows it through the node's holder VM.
            await call("ControllerExpandVolume", csi_pb2.ControllerExpandVolumeRequest(
                volume_id=volume.volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB), volume_capability=WRITER))
        if with_snapshot:
            # csi-snapshotter calls CreateSnapshot again until the snapshot is ready to use.
            while True:
                snapshot = (await call("CreateSnapshot", csi_pb2.CreateSnapshotRequest(
                    name=f"snap-{name}", source_volume_id=volume.volume_id))).snapshot
                if snapshot.ready_to_use:
                    break
                await asyncio.sleep(2)
            restored = (await call("CreateVolume", csi_pb2.CreateVolumeRequest(
                name=f"restore-{name}", capacity_range=csi_pb2.CapacityRange(required_bytes=GiB), volume_capabilities=[WRITER],
                parameters={"storage": storage}, accessibility_requirements=where, volume_content_source=csi_pb2.VolumeContentSource(
                    snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id))))).volume
            await call("DeleteVolume", csi_pb2.DeleteVolumeRequest(volume_id=restored.volume_id))
            await call("DeleteSnapshot", csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id))
        await call("DeleteVolume", csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))
    except aio.AioRpcError as error:
        failures.append(f"lifecycle {index} ({name}): {error.code().name}: {error.details()}")


def sim(url, path, method="GET", body=None):
    request = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}").get("data")


def leak_check(url):
    """Driver-made things Proxmox still holds after every lifecycle ended: volumes, attachments, copy VMs."""
    state = sim(url, "/_sim/state")
    volumes = [v for s in state["storages"].values() for v in s["volumes"] if "vm-9999-" in v]
    copies = [vm["config"].get("name") for vm in state["vms"].values() if str(vm["config"].get("name", "")).startswith("csi-")]
    attached = [(vmid, key) for vmid, vm in state["vms"].items() for key, value in vm["config"].items()
                if key[:4] in ("scsi", "virt") and "vm-9999-" in str(value)]
    locked = [vmid for vmid, vm in state["vms"].items() if vm["config"].get("lock")]
    # Storage snapshots left on any volume (native snapshots whose VM snapshot is gone, or never deleted).
    snapshots = [f"{volid}@{name}" for s in state["storages"].values() for volid, v in s["volumes"].items()
                 for name in v.get("snapshots", [])]
    # Writes that put a volume into a slot another volume held (the simulator records each one):
    # Proxmox would unplug one volume and plug another into the same device. The driver never asks that.
    swaps = [f"VM {s['vm']} {s['key']}: {s['held']} -> {s['new']}" for s in state["in_place_swaps"]]
    return ({"volumes": volumes, "copy_vms": copies, "attachments": attached, "locked_vms": locked, "storage_snapshots": snapshots},
            state["double_attachments"], swaps[:20], state)


async def disturb_vms(sim_url, vms, stop):
    """What an administrator does meanwhile: a VM's hotplug option leaves out
    disks for a while, and a VM migrates to the other Proxmox node."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        vmid = 100 + random.randrange(vms)
        await loop.run_in_executor(None, sim, sim_url, "/_sim/vm-config", "PUT", {"vmid": vmid, "key": "hotplug", "value": "network,usb"})
        await asyncio.sleep(2)
        await loop.run_in_executor(None, sim, sim_url, "/_sim/vm-config", "PUT", {"vmid": vmid, "key": "hotplug", "value": "network,disk,usb"})
        moving = 100 + random.randrange(vms)
        state = await loop.run_in_executor(None, sim, sim_url, "/_sim/state")
        target = "pve2" if state["vms"][str(moving)]["node"] == "pve1" else "pve1"
        await loop.run_in_executor(None, sim, sim_url, "/_sim/migrate", "PUT", {"vmid": moving, "target": target})
        await asyncio.sleep(3)


def duplicate_copies(log_entries):
    """Copy VMs created more than once for one name (each name is one snapshot or restore)."""
    created = {}
    for entry in log_entries:
        name = entry.get("params", {}).get("name", "")
        if entry["status"] == 200 and entry["method"] == "POST" and entry["path"].endswith("/qemu") and name.startswith("csi-"):
            created[name] = created.get(name, 0) + 1
    return {name: n for name, n in created.items() if n > 1}


async def hold_locks(sim_url, vms, stop):
    """Now and then a VM is locked for a while, as a backup or a migration locks it."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        vmid = 100 + random.randrange(vms)
        await loop.run_in_executor(None, sim, sim_url, "/_sim/lock", "PUT", {"vmid": vmid, "lock": "backup"})
        await asyncio.sleep(1.5)
        await loop.run_in_executor(None, sim, sim_url, "/_sim/lock", "PUT", {"vmid": vmid, "lock": ""})
        await asyncio.sleep(2)


class DriverProcess:
    """The controller under test; `--crash` kills it with SIGKILL now and then and starts it again."""

    def __init__(self, work, config):
        self.work, self.config, self.process, self.kills = work, config, None, 0
        self.socket = work / "csi.sock"
        self.log = open(work / "driver.log", "a")

    def start(self):
        self.process = subprocess.Popen([os.environ["DRIVER_BIN"], "--mode", "controller", "--endpoint", f"unix://{self.socket}",
                                         "--config", str(self.config), "--log-level", "warning"],
                                        stdout=self.log, stderr=self.log)
        for _ in range(200):
            if self.socket.exists() and self.process.poll() is None:
                return
            time.sleep(0.025)

    def kill(self):
        self.process.kill()
        self.process.wait()
        self.kills += 1

    def stop(self):
        self.process.terminate()
        self.process.wait()


async def crash_now_and_then(driver, stop):
    """kill -9 at random moments (every 3-10 s), restart after a moment, as a crashing pod would."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=random.uniform(3, 10))
            return
        except asyncio.TimeoutError:
            pass
        driver.kill()
        await asyncio.sleep(random.uniform(0.2, 1.5))
        await loop.run_in_executor(None, driver.start)


async def run(args, endpoint, sim_url, driver):
    stats, failures = {}, []
    stop = asyncio.Event()
    locker = asyncio.create_task(hold_locks(sim_url, args.vms, stop)) if args.faults else None
    disturber = asyncio.create_task(disturb_vms(sim_url, args.vms, stop)) if args.faults else None
    held_after_ok = []
    crasher = asyncio.create_task(crash_now_and_then(driver, stop)) if args.crash else None
    async with aio.insecure_channel(endpoint) as channel:
        workers = {"provisioner": args.provisioner_workers, "attacher": args.attacher_workers,
                   "snapshotter": args.snapshotter_workers, "resizer": args.resizer_workers}
        sidecar = Sidecar(csi_pb2_grpc.ControllerStub(channel), args.timeout, stats, workers)
        started = time.perf_counter()
        snapshots = set(random.Random(7).sample(range(args.lifecycles), int(args.lifecycles * args.snapshot_share)))
        expansions = set(random.Random(11).sample(range(args.lifecycles), int(args.lifecycles * args.expand_share)))
        # max_volumes_per_node as NodeGetInfo reports it for these VMs (scsi0 is their own disk).
        node_slots = [asyncio.Semaphore(30) for _ in range(args.vms)]
        traces = {i: [] for i in range(args.lifecycles)}
        await asyncio.gather(*(lifecycle(i, sidecar, args.vms, args.storage, i in snapshots, i in expansions, failures, node_slots,
                                         sim_url, held_after_ok, traces[i])
                               for i in range(args.lifecycles)))
        wall = time.perf_counter() - started
        stats["_last"] = last_lifecycle(traces, started)
    stop.set()
    for helper in (locker, disturber, crasher):
        if helper:
            await helper
    return wall, stats, failures, len(snapshots), len(expansions), held_after_ok


def last_lifecycle(traces, started):
    """The lifecycle that ended last, call by call: where the run's tail went. `queued`
    is the wait for a free sidecar worker, `driver` the call itself, `between` the gap
    since the lifecycle's previous answer (the snapshotter's poll for ready_to_use)."""
    index, trace = max(((i, t) for i, t in traces.items() if t), key=lambda it: it[1][-1][3], default=(None, []))
    calls, previous = [], None
    for name, asked, sent, done in trace:
        calls.append({"rpc": name, "at_s": round(asked - started, 2), "between_s": round(asked - previous, 2) if previous else 0,
                      "queued_s": round(sent - asked, 2), "driver_s": round(done - sent, 2)})
        previous = done
    return {"index": index, "calls": calls}


def template(path):
    """An API path with its variable parts named, as the driver's metrics name them."""
    names = {"nodes": "{node}", "qemu": "{vmid}", "storage": "{storage}", "content": "{volume}", "tasks": "{upid}",
             "snapshot": "{snapname}"}
    out = []
    for part in path.replace("/api2/json", "").split("/"):
        out.append(names[out[-1]] if out and out[-1] in names and part else part)
    return "/".join(out)


def disks_changed(params):
    """How many disks a config write attaches or detaches (what the simulator charges qmconfig-each for)."""
    deleted = [k for k in re.split(r"[,;\s]+", params.get("delete", "")) if k]
    return sum(1 for key in list(params) + deleted if DISK_KEY.match(key))


def saturated_seconds(spans, names, workers):
    """How long all of a sidecar pool's workers were in calls of `names` at once: time the
    pool, not Proxmox or the driver, held the rest back (csi-snapshotter: 10 workers)."""
    edges = sorted([(a, 1) for n, a, b in spans if n in names] + [(b, -1) for n, a, b in spans if n in names])
    busy, since, total = 0, None, 0.0
    for at, step in edges:
        busy += step
        if busy >= workers and since is None:
            since = at
        elif busy < workers and since is not None:
            total, since = total + at - since, None
    return round(total, 2)


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lifecycles", type=int, default=500)
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--storage", default="ceph",
                        help="the default scenario's storage the volumes go on (local ones are placed by topology)")
    parser.add_argument("--snapshot-share", type=float, default=0.1)
    parser.add_argument("--expand-share", type=float, default=0.0,
                        help="share of lifecycles that also grow the volume while detached (through a holder VM)")
    parser.add_argument("--timeout", type=float, default=30, help="seconds per attempt, as a sidecar's --timeout")
    # The sidecars' --worker-threads as deploy/ sets them (provisioner and snapshotter: their defaults).
    parser.add_argument("--provisioner-workers", type=int, default=100)
    parser.add_argument("--attacher-workers", type=int, default=50)
    parser.add_argument("--snapshotter-workers", type=int, default=10)
    parser.add_argument("--resizer-workers", type=int, default=10)
    parser.add_argument("--faults", action="store_true", help="10%% 500/596 errors, lock holds and slow tasks")
    parser.add_argument("--crash", action="store_true", help="kill -9 the controller every 3-10 s and restart it")
    parser.add_argument("--name-round-seconds", type=float, default=0.0,
                        help="cluster resources name a new VM only after pvestatd's next round, this often (Proxmox: 10)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--keep-evidence", action="store_true",
                        help="keep the Proxmox requests, state and driver log of a clean run too (to trace where time goes)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="load-"))
    scenario(args.vms, work / "scenario.json")
    tasks = ",".join(f"{k}={v}" for k, v in TASKS.items())
    simulator = subprocess.Popen([sys.executable, "-m", "pvesim", "--listen", "127.0.0.1:0", "--port-file", str(work / "port"),
                                  "--scenario", str(work / "scenario.json"), "--task-seconds", tasks, "--exit-on-stdin-eof",
                                  "--auth-failure-delay", "0.2", "--name-round-seconds", str(args.name_round_seconds)],
                                 cwd=ROOT / "simulator", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sim_url = f"http://127.0.0.1:{wait_for_text(work / 'port')}"
    (work / "config.yaml").write_text(f"clusters:\n  - name: sim\n    url: {sim_url}\n    tokenID: csi@pve!csi\n"
                                      "    tokenSecret: 5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21\n")
    driver = DriverProcess(work, work / "config.yaml")
    driver.start()
    socket = driver.socket
    try:
        if args.faults:
            # 10% of requests fail (500 on writes, 596 on reads: a node's proxy lost), 5% are slow.
            sim(sim_url, "/_sim/faults", "PUT", {"rules": json.dumps([
                {"method": "GET", "rate": 0.10, "status": 596},
                {"method": "POST", "rate": 0.10, "status": 500, "message": "injected failure"},
                {"method": "PUT", "rate": 0.10, "status": 500, "message": "injected failure"},
                {"method": "DELETE", "rate": 0.10, "status": 500, "message": "injected failure"},
                {"rate": 0.05, "delay_ms": 2000},
            ])})
            # 10% of hot-unplugs and 5% of hot-plugs fail (the task fails, the change stays pending);
            # copies take 40 s (an import of a 1 GiB volume at ~25 MiB/s).
            sim(sim_url, "/_sim/hotplug-faults", "PUT", {"rules": json.dumps([
                {"action": "unplug", "rate": 0.10}, {"action": "plug", "rate": 0.05}])})
            sim(sim_url, "/_sim/task-seconds", "PUT", {"import-per-gib": 40})
        sim(sim_url, "/_sim/log", "DELETE")
        wall, stats, failures, snapshots, expansions, held_after_ok = asyncio.run(run(args, f"unix://{socket}", sim_url, driver))
        if args.faults:
            sim(sim_url, "/_sim/faults", "PUT", {"rules": "[]"})
        log_entries = sim(sim_url, "/_sim/log") or []
        leaks, doubles, swaps, final_state = leak_check(sim_url)
    finally:
        simulator.stdin.close()
        driver.stop()
        simulator.wait(10)

    # Per-VM serialization: each config write of a VM is a task that holds
    # the VM's config lock. The bound is the busiest VM's sum of those tasks
    # as the driver issued them; a driver writing once per attach or detach
    # would have issued one task per disk change instead.
    writes, disk_changes = {}, {}
    for entry in log_entries:
        if entry["status"] == 200 and entry["method"] in ("POST", "PUT") and "/qemu/" in entry["path"] and entry["path"].endswith("/config"):
            vmid = entry["path"].split("/qemu/")[1].split("/")[0]
            if int(vmid) < 100 + args.vms:
                disks = disks_changed(entry.get("params", {}))
                writes.setdefault(vmid, []).append(disks)
                disk_changes[vmid] = disk_changes.get(vmid, 0) + disks
    task_seconds = {vmid: sum(TASKS["qmconfig"] + max(0, n - 1) * TASKS["qmconfig-each"] for n in ns) for vmid, ns in writes.items()}
    per_vm = {vmid: len(ns) for vmid, ns in writes.items()}
    bound = max(task_seconds.values(), default=0)
    unbatched_bound = max(disk_changes.values(), default=0) * TASKS["qmconfig"]
    # How the busiest VM's config changes followed each other: idle gaps between them are lost time.
    busiest = max(task_seconds, key=task_seconds.get) if task_seconds else None
    changes = sorted((e["time"], e["time"] + e["ms"] / 1000) for e in log_entries
                     if e["status"] == 200 and e["method"] == "POST" and e["path"].endswith(f"/qemu/{busiest}/config"))
    gaps = [b[0] - a[1] for a, b in zip(changes, changes[1:])]
    log_start = min((e["time"] for e in log_entries), default=0)
    first_change = changes[0][0] - log_start if changes else 0
    last_change_end = changes[-1][1] - log_start if changes else 0
    by_path, server_ms = {}, {}
    for entry in log_entries:
        key = entry["method"] + " " + template(entry["path"])
        by_path[key] = by_path.get(key, 0) + 1
        server_ms.setdefault(key, []).append(entry.get("ms", 0))
    # p50/p99 of the driver's answer to each call a sidecar worker sent (the last, successful attempt),
    # and `overall`: from the lifecycle's first attempt, with the wait for a free worker and every retry.
    rpcs = {name: {"count": len(v), "p50": statistics.median(v), "p99": percentile(v, 0.99),
                   "overall_p50": statistics.median(stats["_overall " + name]), "overall_p99": percentile(stats["_overall " + name], 0.99)}
            for name, v in sorted(stats.items()) if not name.startswith("_")}
    result = {
        "lifecycles": args.lifecycles, "vms": args.vms, "storage": args.storage, "snapshot_lifecycles": snapshots,
        "expansion_lifecycles": expansions, "faults": args.faults,
        "crash": args.crash, "controller_kills": driver.kills, "name_round_seconds": args.name_round_seconds,
        "wall_seconds": round(wall, 2), "lower_bound_seconds": round(bound, 2),
        "ratio": round(wall / bound, 3) if bound else None,
        "unbatched_bound_seconds": unbatched_bound,
        "ratio_to_unbatched_bound": round(wall / unbatched_bound, 3) if unbatched_bound else None,
        "busiest_vm": {"vmid": busiest, "config_writes": per_vm.get(busiest), "disk_changes": disk_changes.get(busiest), "first_change_after_s": round(first_change, 2),
                       "gap_ms_p50": round(statistics.median(gaps) * 1000, 1) if gaps else None,
                       "gap_ms_p99": round(percentile(gaps, 0.99) * 1000, 1) if gaps else None,
                       "idle_s": round(sum(gaps), 2), "last_change_ended_s": round(last_change_end, 2),
                       # After the busiest VM's last change: the snapshot → restore → delete chains still running.
                       "tail_s": round(wall - last_change_end, 2)},
        "last_lifecycle": stats.get("_last"),
        # The tail's usual cause: every csi-snapshotter worker busy in a CreateSnapshot or DeleteSnapshot.
        "snapshotter_all_workers_busy_s": saturated_seconds(stats.get("_spans", []), ("CreateSnapshot", "DeleteSnapshot"),
                                                            args.snapshotter_workers),
        "failed_lifecycles": len(failures), "failures": failures[:20], "retries": sum(stats.get("_retries", [])),
        "errors_retried": stats.get("_errors", {}),
        "proxmox_calls": len(log_entries), "proxmox_calls_per_lifecycle": round(len(log_entries) / args.lifecycles, 1),
        "proxmox_calls_by_path": dict(sorted(by_path.items(), key=lambda kv: -kv[1])),
        "simulator_ms_p50_p99": {k: [statistics.median(v), percentile(v, 0.99)] for k, v in server_ms.items()},
        "rpcs": rpcs, "leaks": leaks, "double_attachments": doubles, "disks_swapped_in_place": swaps,
        "unpublish_ok_while_held": held_after_ok, "duplicate_copies": duplicate_copies(log_entries),
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("rpcs", "proxmox_calls_by_path", "simulator_ms_p50_p99")}, indent=1))
    print("simulator ms p50/p99:", json.dumps(result["simulator_ms_p50_p99"]))
    print("proxmox calls by path:", json.dumps(dict(list(result["proxmox_calls_by_path"].items())[:12]), indent=1))
    print(f"{'rpc (driver time; overall: with the sidecar queue and retries)':28}")
    print(f"{'rpc':28}{'count':>7}{'p50 s':>9}{'p99 s':>9}{'overall p50':>13}{'p99':>7}")
    for name, r in rpcs.items():
        print(f"{name:28}{r['count']:>7}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['overall_p50']:>13.2f}{r['overall_p99']:>7.2f}")
    Path(args.results).mkdir(parents=True, exist_ok=True)
    variant = ('-faults' if args.faults else '') + ('-crash' if args.crash else '') + ('-expand' if expansions else '')
    variant += '' if args.storage == "ceph" else f"-{args.storage}"
    variant += f"-names{args.name_round_seconds:g}s" if args.name_round_seconds else ""
    out = Path(args.results) / f"load-n{args.lifecycles}-m{args.vms}{variant}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")
    clean = (not failures and not any(leaks.values()) and not result["double_attachments"] and not swaps
             and not held_after_ok and not result["duplicate_copies"])
    if not clean or args.keep_evidence:
        # What it takes to trace a leak or a double attachment afterwards: every Proxmox request
        # (with its parameters), what Proxmox held at the end, and the driver's log.
        evidence = out.with_suffix(".evidence")
        evidence.mkdir(exist_ok=True)
        (evidence / "proxmox-requests.json").write_text(json.dumps(log_entries, indent=0) + "\n")
        (evidence / "proxmox-state.json").write_text(json.dumps(final_state, indent=1) + "\n")
        # Each successful call's send and answer, in seconds from the first: which sidecar pool was busy when.
        first = min((s[1] for s in stats.get("_spans", [])), default=0)
        (evidence / "rpc-spans.json").write_text(json.dumps([(n, round(a - first, 3), round(b - first, 3))
                                                             for n, a, b in stats.get("_spans", [])]) + "\n")
        driver.log.flush()
        shutil.copy(work / "driver.log", evidence / "driver.log")
        print(f"{'not clean: ' if not clean else ''}evidence in {evidence}")
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
