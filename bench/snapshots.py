"""Snapshot time and space, storage snapshots against full copies, side by side in one
run (issue 15): 1 GiB and 64 GiB volumes on lvmthin, rbd, zfspool and nfs (raw files), each
snapshotted by a controller with `driver.snapshots: native` and by one with
`driver.snapshots: copy`, both against one simulator whose full copies move at its
default rate (2 s per GiB). Every measurement runs at once (the simulator copies
each volume in its own task), so the run lasts about as long as its longest copy.
Run by scripts/benchmark-snapshots; writes bench/results/snapshots.{json,md}."""
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "csi-sanity" / "_gen"))
import grpc  # noqa: E402

import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402
from benchlib import wait_for_socket, wait_for_text  # noqa: E402

GiB = 1 << 30
STORAGES = ["local-lvm", "ceph", "tank", "nfs"]  # nfs: a raw file storage with room for 64 GiB copies
SIZES = [1, 64]
TASKS = "qmconfig=0.5,qmcreate=3,qmdestroy=1,imgdel=0.5,qmsnapshot=0.5,qmdelsnapshot=0.5"


def state(base):
    return json.loads(urllib.request.urlopen(base + "/_sim/state").read())["data"]


def start_driver(work, base, mode):
    (work / f"config-{mode}.yaml").write_text(f"""clusters:
  - name: sim
    url: {base}
    tokenID: csi@pve!csi
    tokenSecret: 5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21
driver:
  snapshots: {mode}
""")
    socket = work / f"csi-{mode}.sock"
    process = subprocess.Popen([os.environ["DRIVER_BIN"], "--mode", "controller", "--endpoint", f"unix://{socket}",
                                "--config", str(work / f"config-{mode}.yaml"), "--log-level", "warning"], stderr=subprocess.DEVNULL)
    wait_for_socket(socket)
    return process, socket


def retried(call, request):
    """As the sidecars do: ask again while the answer is ABORTED or UNAVAILABLE (here: the other
    controller's VM being created, which this one cannot tell from an earlier attempt of its own)."""
    while True:
        try:
            return call(request, timeout=600)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                raise
            time.sleep(1)


def measure(socket, base, storage, size_gib, mode):
    capability = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
                                          access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        controller = csi_pb2_grpc.ControllerStub(channel)
        volume = retried(controller.CreateVolume, csi_pb2.CreateVolumeRequest(
            name=f"pvc-{uuid.uuid4()}", capacity_range=csi_pb2.CapacityRange(required_bytes=size_gib * GiB),
            volume_capabilities=[capability], parameters={"storage": storage},
            accessibility_requirements=csi_pb2.TopologyRequirement(
                preferred=[csi_pb2.Topology(segments={"topology.kubernetes.io/zone": "pve1"})]))).volume
        request = csi_pb2.CreateSnapshotRequest(name=f"snap-{uuid.uuid4()}", source_volume_id=volume.volume_id)
        started = time.perf_counter()
        while True:  # as csi-snapshotter does: ask again until ready
            snapshot = retried(controller.CreateSnapshot, request).snapshot
            if snapshot.ready_to_use:
                break
            time.sleep(1)
        seconds = time.perf_counter() - started
        # What the snapshot holds on the storage: the volumes its VM owns (a copy VM owns its copy;
        # a source VM owns nothing, its storage snapshot starts empty). Other runs' volumes come and go meanwhile.
        vmid = snapshot.snapshot_id.split("/")[1]
        space = sum(v["size"] for s in state(base)["storages"].values() for v in s["volumes"].values() if str(v["vmid"]) == vmid)
        kind = "copy" if snapshot.snapshot_id.split("/")[2].startswith("csi-snap-") else "storage snapshot"
        retried(controller.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id))
        retried(controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))
    return {"storage": storage, "gib": size_gib, "mode": mode, "kind": kind, "seconds": round(seconds, 2), "space_bytes": space}


def main():
    work = Path(tempfile.mkdtemp(prefix="snapshots-bench-"))
    sim = subprocess.Popen([sys.executable, "-m", "pvesim", "--listen", "127.0.0.1:0", "--port-file", str(work / "port"),
                            "--task-seconds", TASKS, "--exit-on-stdin-eof"],
                           cwd=ROOT / "simulator", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{wait_for_text(work / 'port')}"
    drivers = {}
    try:
        for mode in ("native", "copy"):
            drivers[mode] = start_driver(work, base, mode)
        jobs = [(storage, size, mode) for storage in STORAGES for size in SIZES for mode in ("native", "copy")]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            rows = list(pool.map(lambda job: measure(drivers[job[2]][1], base, *job), jobs))
    finally:
        for process, _ in drivers.values():
            process.terminate()
        sim.terminate()
    report(rows)


def report(rows):
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "snapshots.json").write_text(json.dumps(rows, indent=1) + "\n")
    by = {(r["storage"], r["gib"], r["mode"]): r for r in rows}
    lines = ["Snapshot until ready_to_use, and the storage space it took; one run, full copies at the simulator's "
             "2 s/GiB (512 MiB/s). `native`: driver.snapshots native (default); `copy`: full copies everywhere.", "",
             "| storage | size | native: kind | native s | native space | copy s | copy space | copy ÷ native (time) |",
             "|---|---|---|---|---|---|---|---|"]
    for storage in STORAGES:
        for size in SIZES:
            native, copy = by[(storage, size, "native")], by[(storage, size, "copy")]
            ratio = copy["seconds"] / native["seconds"] if native["seconds"] else float("inf")
            lines.append(f"| {storage} | {size} GiB | {native['kind']} | {native['seconds']} | {native['space_bytes'] / GiB:.0f} GiB | "
                         f"{copy['seconds']} | {copy['space_bytes'] / GiB:.0f} GiB | {ratio:.1f}× |")
    text = "\n".join(lines) + "\n"
    (results / "snapshots.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
