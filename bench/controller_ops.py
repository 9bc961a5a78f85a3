"""Proxmox API calls and wall time per controller operation, against the
simulator with realistic task durations. Run by scripts/benchmark-controller."""
import json
import os
import statistics
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

# Task durations seen on small Proxmox clusters: config changes and hot-plug
# about half a second, a resize a second, a VM create with a 1 GiB import a few seconds.
TASKS = "qmconfig=0.5,resize=1,qmcreate=3,qmdestroy=1,imgdel=0.5"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
GiB = 1 << 30


def main():
    work = Path(tempfile.mkdtemp(prefix="controller-ops-"))
    sim = subprocess.Popen([sys.executable, "-m", "pvesim", "--listen", "127.0.0.1:0", "--port-file", str(work / "port"),
                            "--task-seconds", TASKS, "--exit-on-stdin-eof"],
                           cwd=ROOT / "simulator", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{wait_for_text(work / 'port')}"
    (work / "config.yaml").write_text(f"""clusters:
  - name: sim
    url: {base}
    tokenID: csi@pve!csi
    tokenSecret: 5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21
""")
    socket = work / "csi.sock"
    driver = subprocess.Popen([os.environ["DRIVER_BIN"], "--mode", "controller", "--endpoint", f"unix://{socket}",
                               "--config", str(work / "config.yaml"), "--log-level", "warning"], stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(socket)
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            run(csi_pb2_grpc.ControllerStub(channel), base)
    finally:
        driver.terminate()
        sim.terminate()


def clear_log(base):
    urllib.request.urlopen(urllib.request.Request(base + "/_sim/log", method="DELETE")).read()


def read_log(base):
    return json.loads(urllib.request.urlopen(base + "/_sim/log").read())["data"]


def measure(base, results, name, call):
    clear_log(base)
    started = time.perf_counter()
    value = call()
    elapsed = time.perf_counter() - started
    log = read_log(base)
    task_polls = sum(1 for e in log if e["path"].endswith("/status") and "/tasks/" in e["path"])
    results.setdefault(name, []).append((elapsed, len(log), task_polls))
    return value


def run(controller, base):
    capability = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
                                          access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))
    results = {}
    for _ in range(ROUNDS):
        name = f"pvc-{uuid.uuid4()}"
        volume = measure(base, results, "create", lambda: controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=GiB), volume_capabilities=[capability],
            parameters={"storage": "local-lvm"}, accessibility_requirements=csi_pb2.TopologyRequirement(
                preferred=[csi_pb2.Topology(segments={"topology.kubernetes.io/zone": "pve1"})])), timeout=120).volume)
        vid = volume.volume_id
        measure(base, results, "attach", lambda: controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=vid, node_id="k8s-node-1", volume_capability=capability, volume_context=volume.volume_context), timeout=120))
        measure(base, results, "expand (attached)", lambda: controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)), timeout=120))
        snap = measure(base, results, "snapshot", lambda: controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
            name=f"snap-{uuid.uuid4()}", source_volume_id=vid), timeout=120).snapshot)
        measure(base, results, "detach", lambda: controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=vid, node_id="k8s-node-1"), timeout=120))
        measure(base, results, "expand (detached)", lambda: controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=3 * GiB)), timeout=120))
        restored = measure(base, results, "restore", lambda: controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=f"pvc-{uuid.uuid4()}", capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB),
            volume_capabilities=[capability], parameters={"storage": "local-lvm"},
            volume_content_source=csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(
                snapshot_id=snap.snapshot_id))), timeout=120).volume)
        measure(base, results, "delete restored", lambda: controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=restored.volume_id), timeout=120))
        measure(base, results, "delete snapshot", lambda: controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=120))
        measure(base, results, "delete", lambda: controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid), timeout=120))

    lines = [f"Controller operations against pvesim, task durations {TASKS}, median of {ROUNDS} rounds",
             f"{'operation':<20}{'wall s':>8}{'API calls':>11}{'task polls':>12}"]
    for name, samples in results.items():
        lines.append(f"{name:<20}{statistics.median(s[0] for s in samples):>8.2f}"
                     f"{statistics.median(s[1] for s in samples):>11.0f}{statistics.median(s[2] for s in samples):>12.0f}")
    report = "\n".join(lines)
    print(report)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"controller-ops-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.txt"
    path.write_text(report + "\n")
    print(f"(saved to {path.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
