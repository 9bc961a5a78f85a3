"""NodeStageVolume on a 1 GiB disk against the bare commands it performs.

A loop device over a sparse 1 GiB file stands for the hot-plugged disk,
described in a private sysfs tree the way virtio-blk shows it (a serial
file), so the driver finds it exactly as on a Proxmox VM. Each round times,
side by side:
  first stage:   NodeStage of a blank disk  vs  mkfs + mount, and vs blkid -p + mkfs + mount
  restage:       NodeStage of a formatted disk  vs  mount (fsck.ext4 -p + mount for ext4), and with blkid -p first
The driver probes the device before it formats or mounts it (never format a
disk that holds data), as Kubernetes' mount-utils SafeFormatAndMount does with
`blkid -p`: the second ratio compares it with that same safe sequence done by hand.
Run by scripts/benchmark-node (root and loop devices needed). ROUNDS=N sets the rounds.
"""
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "csi-sanity" / "_gen"))
import grpc  # noqa: E402

import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402
from benchlib import wait_for_socket  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "5"))
VOLUME_ID = "sim//ceph/vm-9999-pvc-bench"
# The serial the controller gives this volume's disk (VolumeNaming.serial: cluster/storage/volume).
SERIAL = "csi-" + hashlib.sha256(b"sim/ceph/vm-9999-pvc-bench").hexdigest()[:16]


def run(*command):
    subprocess.run(command, check=True, capture_output=True)


def probe(device):
    """mount-utils' probe (exit 2: nothing found, a blank disk)."""
    subprocess.run(["blkid", "-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", device], capture_output=True)


def blank(device):
    """The disk as a new Proxmox volume reads, all zeros (LVM-thin, rbd, ZFS and qcow2 hand
    out zeroed space): discarding a loop device punches its file back to holes. Before, the
    rounds only wiped signatures (wipefs), leaving the last mkfs's metadata behind."""
    run("blkdiscard", "-f", device)


def timed(action):
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main():
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        sys.exit("benchmark-node needs root and loop devices")
    work = Path(tempfile.mkdtemp(prefix="node-stage-"))
    image = work / "disk.img"
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True).stdout.strip()
    name = Path(device).name
    entry = work / "sys" / "block" / name
    entry.mkdir(parents=True)
    (entry / "serial").write_text(SERIAL + "\n")
    (entry / "dev").write_text(Path(f"/sys/block/{name}/dev").read_text())
    staging = work / "kubelet" / "plugins" / "staging" / "bench"
    bare = work / "bare"
    staging.mkdir(parents=True)
    bare.mkdir()
    socket = work / "csi.sock"
    driver = subprocess.Popen(os.environ.get("DRIVER_WRAPPER", "").split() + [os.environ["DRIVER_BIN"], "--mode", "node", "--endpoint", f"unix://{socket}", "--node-id", "bench",
                               "--kubelet-dir", str(work / "kubelet"), "--sys-root", str(work / "sys"), "--log-level", "warning"])
    try:
        wait_for_socket(socket)
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            node = csi_pb2_grpc.NodeStub(channel)
            results = {}
            for fs in ("xfs", "ext4"):
                results[fs] = measure(node, fs, device, staging, bare)
        report(results)
    finally:
        driver.terminate()
        driver.wait()
        for path in (staging, bare):
            subprocess.run(["umount", str(path)], capture_output=True)
        subprocess.run(["losetup", "-d", device], capture_output=True)
        subprocess.run(["rm", "-rf", str(work)])


def measure(node, fs, device, staging, bare):
    capability = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs),
                                          access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))
    stage = csi_pb2.NodeStageVolumeRequest(volume_id=VOLUME_ID, staging_target_path=str(staging), volume_capability=capability,
                                           publish_context={"serial": SERIAL})
    unstage = csi_pb2.NodeUnstageVolumeRequest(volume_id=VOLUME_ID, staging_target_path=str(staging))
    options = ["-o", "nouuid"] if fs == "xfs" else []
    times = {key: [] for key in ("stage", "mkfs+mount", "probe+mkfs+mount", "restage", "mount", "probe+mount")}
    blank(device)
    node.NodeStageVolume(stage, timeout=60)  # warm up: first process spawns, page cache
    node.NodeUnstageVolume(unstage, timeout=60)
    for _ in range(ROUNDS):
        blank(device)
        times["mkfs+mount"].append(timed(lambda: (run(f"mkfs.{fs}", "-q", device), run("mount", "-t", fs, *options, device, str(bare)))))
        run("umount", str(bare))
        if fs == "ext4":
            times["mount"].append(timed(lambda: (run("fsck.ext4", "-p", device), run("mount", "-t", fs, device, str(bare)))))
        else:
            times["mount"].append(timed(lambda: run("mount", "-t", fs, *options, device, str(bare))))
        run("umount", str(bare))
        blank(device)
        times["probe+mkfs+mount"].append(timed(lambda: (probe(device), run(f"mkfs.{fs}", "-q", device),
                                                        run("mount", "-t", fs, *options, device, str(bare)))))
        run("umount", str(bare))
        if fs == "ext4":
            times["probe+mount"].append(timed(lambda: (probe(device), run("fsck.ext4", "-p", device), run("mount", "-t", fs, device, str(bare)))))
        else:
            times["probe+mount"].append(timed(lambda: (probe(device), run("mount", "-t", fs, *options, device, str(bare)))))
        run("umount", str(bare))

        blank(device)
        times["stage"].append(timed(lambda: node.NodeStageVolume(stage, timeout=60)))
        node.NodeUnstageVolume(unstage, timeout=60)
        times["restage"].append(timed(lambda: node.NodeStageVolume(stage, timeout=60)))
        node.NodeUnstageVolume(unstage, timeout=60)
    return {key: statistics.median(values) for key, values in times.items()}


def report(results):
    print(f"NodeStageVolume on a 1 GiB loop device, median of {ROUNDS} rounds (driver and bare commands in the same rounds)")
    print(f"{'':6}{'first stage':>12}{'mkfs+mount':>12}{'ratio':>7}{'+blkid':>9}{'ratio':>7}   "
          f"{'restage':>8}{'mount':>8}{'ratio':>7}{'+blkid':>8}{'ratio':>7}")
    ms = lambda seconds: f"{seconds * 1000:.1f} ms"
    for fs, t in results.items():
        print(f"{fs:6}{ms(t['stage']):>12}{ms(t['mkfs+mount']):>12}{t['stage'] / t['mkfs+mount']:>7.2f}"
              f"{ms(t['probe+mkfs+mount']):>9}{t['stage'] / t['probe+mkfs+mount']:>7.2f}   "
              f"{ms(t['restage']):>8}{ms(t['mount']):>8}{t['restage'] / t['mount']:>7.2f}"
              f"{ms(t['probe+mount']):>8}{t['restage'] / t['probe+mount']:>7.2f}")
    print("(+blkid: the bare sequence with mount-utils' blkid -p probe first, as the driver probes before formatting;")
    print(" ext4 restage includes fsck.ext4 -p on both sides, as the driver checks before a read-write mount)")


if __name__ == "__main__":
    main()
