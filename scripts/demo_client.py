"""The demo's client side: one volume's life, each call the way kubelet or a
sidecar makes it, with what it did in Proxmox (the API calls the simulator
saw) and on this host (the disk, the mounts, the file).

Usage: demo_client.py ENDPOINT SIMULATOR_URL KUBELET_DIR [--controller-only]"""
import json
import os
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, "csi-sanity/_gen")
import grpc  # noqa: E402

import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402

GiB = 1 << 30
WRITER = csi_pb2.VolumeCapability.AccessMode(mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
XFS = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"), access_mode=WRITER)


class Demo:
    def __init__(self, simulator):
        self.simulator = simulator
        self.started = time.perf_counter()

    def proxmox_calls(self):
        with urllib.request.urlopen(self.simulator + "/_sim/log") as response:
            log = json.loads(response.read())["data"]
        urllib.request.urlopen(urllib.request.Request(self.simulator + "/_sim/log", method="DELETE")).read()
        return [f"{e['method']} {urllib.parse.unquote(e['path'].replace('/api2/json', ''))} -> {e['status']}" for e in log]

    def step(self, title, call, show=None):
        """Runs one call; prints its time, its answer (or `show(result)`) and the Proxmox calls it made."""
        self.proxmox_calls()
        started = time.perf_counter()
        try:
            result = call()
        except grpc.RpcError as error:
            print(f"-- {title}\n   FAILED {error.code().name}: {error.details()}")
            raise SystemExit(1)
        elapsed = (time.perf_counter() - started) * 1000
        calls = self.proxmox_calls()
        print(f"-- {title}  ({elapsed:.0f} ms, {len(calls)} Proxmox API call{'s' if len(calls) != 1 else ''})")
        shown = show(result) if show else result if isinstance(result, str) else (" ".join(str(result).split()) or "OK")
        for line in str(shown).splitlines():
            print(f"   {line[:160]}")
        for line in calls:
            print(f"      {line}")
        return result


def mount_line(path):
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == str(path):
            sep = fields.index("-")
            return f"{fields[sep + 2]} on {path} type {fields[sep + 1]} ({fields[sep + 3]})"
    return f"nothing mounted at {path}"


def size_of(path):
    stat = os.statvfs(path)
    return f"{stat.f_blocks * stat.f_frsize / GiB:.2f} GiB filesystem, {stat.f_bavail * stat.f_frsize / GiB:.2f} GiB free"


class Volume:
    """A PVC's volume as kubelet sees it: where it is staged and where the pod sees it."""

    def __init__(self, created, kubelet, pod):
        self.volume = created
        self.id = created.volume_id
        self.staging = kubelet / "plugins" / "kubernetes.io" / "csi" / "proxmox-csi" / self.id.rsplit("/", 1)[1] / "globalmount"
        self.target = kubelet / "pods" / pod / "volumes" / "kubernetes.io~csi" / self.id.rsplit("/", 1)[1] / "mount"
        self.publish_context = {}


def attach_and_mount(demo, controller, node, volume, info, label):
    def publish():
        response = controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume.id, node_id=info.node_id, volume_capability=XFS, volume_context=volume.volume.volume_context), timeout=60)
        volume.publish_context = dict(response.publish_context)
        return f"publish_context {volume.publish_context}"
    demo.step(f"ControllerPublishVolume ({label}): hot-plug the disk into VM {info.node_id}", publish)

    def stage():
        volume.staging.mkdir(parents=True, exist_ok=True)
        node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=volume.id, staging_target_path=str(volume.staging), volume_capability=XFS,
            publish_context=volume.publish_context, volume_context=volume.volume.volume_context), timeout=120)
        return mount_line(volume.staging)
    demo.step(f"NodeStageVolume ({label}): find the disk by serial {volume.publish_context.get('serial')}, "
              "format it only if blank, mount it", stage)

    def publish_to_pod():
        volume.target.parent.mkdir(parents=True, exist_ok=True)
        node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=volume.id, staging_target_path=str(volume.staging), target_path=str(volume.target),
            volume_capability=XFS, publish_context=volume.publish_context), timeout=60)
        return mount_line(volume.target)
    demo.step(f"NodePublishVolume ({label}): bind it into the pod's directory", publish_to_pod)


def detach(demo, controller, node, volume, info, label):
    demo.step(f"NodeUnpublishVolume ({label})", lambda: (node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id=volume.id, target_path=str(volume.target)), timeout=60), mount_line(volume.target))[1])
    demo.step(f"NodeUnstageVolume ({label})", lambda: (node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id=volume.id, staging_target_path=str(volume.staging)), timeout=60), mount_line(volume.staging))[1])
    demo.step(f"ControllerUnpublishVolume ({label}): detach from VM {info.node_id}", lambda: controller.ControllerUnpublishVolume(
        csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.id, node_id=info.node_id), timeout=60))


def create(demo, controller, title, info, **extra):
    return demo.step(title, lambda: controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=f"pvc-{uuid.uuid4()}", capacity_range=csi_pb2.CapacityRange(required_bytes=GiB), volume_capabilities=[XFS],
        parameters={"storage": "local-lvm", "csi.storage.k8s.io/fstype": "xfs", "ssd": "true"},
        accessibility_requirements=csi_pb2.TopologyRequirement(preferred=[info.accessible_topology]), **extra), timeout=120).volume)


def main(endpoint, simulator, kubelet, controller_only):
    demo = Demo(simulator)
    with grpc.insecure_channel(endpoint) as channel:
        identity = csi_pb2_grpc.IdentityStub(channel)
        controller = csi_pb2_grpc.ControllerStub(channel)
        node = csi_pb2_grpc.NodeStub(channel)
        demo.step("GetPluginInfo, as node-driver-registrar asks at start",
                  lambda: identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5))
        info = demo.step("NodeGetInfo: which VM and Proxmox node this host is (found by its SMBIOS UUID)",
                         lambda: node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=30))
        first = Volume(create(demo, controller, "CreateVolume: 1 GiB, xfs, on local-lvm in this host's zone", info), kubelet, "web-0")

        if controller_only:
            demo.step("ControllerPublishVolume: hot-plug it into VM k8s-node-1", lambda: controller.ControllerPublishVolume(
                csi_pb2.ControllerPublishVolumeRequest(volume_id=first.id, node_id=info.node_id, volume_capability=XFS), timeout=60))
            demo.step("ControllerUnpublishVolume", lambda: controller.ControllerUnpublishVolume(
                csi_pb2.ControllerUnpublishVolumeRequest(volume_id=first.id, node_id=info.node_id), timeout=60))
            demo.step("DeleteVolume", lambda: controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=first.id), timeout=60))
            return report(demo, simulator, kubelet)

        attach_and_mount(demo, controller, node, first, info, "web-0")

        def write():
            path = first.target / "index.html"
            path.write_text("hello from the first volume\n")
            os.sync()
            return f"wrote {path}: {path.read_text().strip()!r}"
        demo.step("the pod writes a file", write)

        snapshot = demo.step("CreateSnapshot: a full copy, held by a stopped VM in Proxmox", lambda: controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name=f"snap-{uuid.uuid4()}", source_volume_id=first.id), timeout=300).snapshot)
        source = csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id))
        second = Volume(create(demo, controller, "CreateVolume from the snapshot (a second PVC)", info, volume_content_source=source),
                        kubelet, "web-1")
        attach_and_mount(demo, controller, node, second, info, "web-1")
        demo.step("the second pod reads the file back", lambda: f"{second.target / 'index.html'}: "
                  f"{(second.target / 'index.html').read_text().strip()!r}")

        before = size_of(first.target)
        demo.step("ControllerExpandVolume: grow the first volume to 2 GiB while in use", lambda: controller.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(volume_id=first.id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB),
                                                  volume_capability=XFS), timeout=120))
        demo.step("NodeExpandVolume: grow the mounted xfs to match", lambda: (node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id=first.id, volume_path=str(first.target), staging_target_path=str(first.staging),
            capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB), volume_capability=XFS), timeout=120),
            f"before: {before}\nafter:  {size_of(first.target)}")[1])

        def stats():
            response = node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=first.id, volume_path=str(first.target)),
                                               timeout=30)
            lines = [f"{csi_pb2.VolumeUsage.Unit.Name(u.unit)}: total {u.total}, used {u.used}, available {u.available}"
                     for u in response.usage]
            return "\n".join(lines + [f"condition: abnormal={response.volume_condition.abnormal} "
                                      f"({response.volume_condition.message})"])
        demo.step("NodeGetVolumeStats, as kubelet asks for its volume metrics", stats)

        for volume, label in ((second, "web-1"), (first, "web-0")):
            detach(demo, controller, node, volume, info, label)
        demo.step("DeleteVolume (the restored one)", lambda: controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=second.id), timeout=60))
        demo.step("DeleteSnapshot", lambda: controller.DeleteSnapshot(
            csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id), timeout=60))
        demo.step("DeleteVolume", lambda: controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=first.id), timeout=60))
        report(demo, simulator, kubelet)


def report(demo, simulator, kubelet):
    with urllib.request.urlopen(simulator + "/_sim/state") as response:
        state = json.loads(response.read())["data"]
    left = [v for s in state["storages"].values() for v in s["volumes"] if "vm-9999" in v]
    copies = [vm["config"].get("name") for vm in state["vms"].values() if str(vm["config"].get("name", "")).startswith("csi-")]
    mounts = [l for l in Path("/proc/self/mountinfo").read_text().splitlines() if f" {kubelet}/" in l]
    print(f"-- afterwards: Proxmox holds {len(left)} driver volumes and {len(copies)} snapshot VMs; "
          f"{len(mounts)} mounts left under the kubelet directory")
    print(f"-- the whole walk took {time.perf_counter() - demo.started:.1f} s")
    if left or copies or mounts:
        raise SystemExit(1)


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), "--controller-only" in sys.argv[4:])
    except KeyboardInterrupt:
        print("\n-- interrupted: cleaning up")
        raise SystemExit(130)
