"""The demo's client side: one volume's life, each call the way kubelet or a
sidecar makes it, with the Proxmox API calls the driver made for it."""
import json
import sys
import time
import urllib.parse
import urllib.request
import uuid

sys.path.insert(0, "csi-sanity/_gen")
import grpc  # noqa: E402

import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402

GiB = 1 << 30


class Demo:
    def __init__(self, simulator):
        self.simulator = simulator

    def proxmox_calls(self):
        with urllib.request.urlopen(self.simulator + "/_sim/log") as response:
            log = json.loads(response.read())["data"]
        urllib.request.urlopen(urllib.request.Request(self.simulator + "/_sim/log", method="DELETE")).read()
        return [f"{e['method']} {urllib.parse.unquote(e['path'].replace('/api2/json', ''))} -> {e['status']}" for e in log]

    def step(self, title, call):
        self.proxmox_calls()
        started = time.perf_counter()
        try:
            result = call()
            outcome = " ".join(str(result).split()) or "(empty response)"
        except grpc.RpcError as error:
            result, outcome = None, f"{error.code().name}: {error.details()}"
        elapsed = (time.perf_counter() - started) * 1000
        calls = self.proxmox_calls()
        print(f"-- {title} ({elapsed:.0f} ms, {len(calls)} Proxmox API calls)\n   {outcome[:300]}")
        for line in calls:
            print(f"      {line}")
        return result


def main(endpoint, simulator):
    demo = Demo(simulator)
    capability = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
                                          access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))
    with grpc.insecure_channel(endpoint) as channel:
        identity = csi_pb2_grpc.IdentityStub(channel)
        controller = csi_pb2_grpc.ControllerStub(channel)
        node = csi_pb2_grpc.NodeStub(channel)
        demo.step("GetPluginInfo, as node-driver-registrar asks at start",
                  lambda: identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5))
        demo.step("Probe, as livenessprobe asks every few seconds", lambda: identity.Probe(csi_pb2.ProbeRequest(), timeout=5))
        info = demo.step("NodeGetInfo: which VM and Proxmox node this host is",
                         lambda: node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10))
        volume = demo.step("CreateVolume: a 1 GiB xfs volume on local-lvm, in this host's zone", lambda: controller.CreateVolume(
            csi_pb2.CreateVolumeRequest(
                name=f"pvc-{uuid.uuid4()}", capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
                volume_capabilities=[capability], parameters={"storage": "local-lvm", "csi.storage.k8s.io/fstype": "xfs", "ssd": "true"},
                accessibility_requirements=csi_pb2.TopologyRequirement(preferred=[info.accessible_topology])), timeout=60).volume)
        vid = volume.volume_id
        demo.step("ControllerPublishVolume: hot-plug it into VM k8s-node-1", lambda: controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(volume_id=vid, node_id=info.node_id, volume_capability=capability,
                                                   volume_context=volume.volume_context), timeout=60))
        demo.step("ControllerExpandVolume: grow it to 2 GiB while attached", lambda: controller.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)), timeout=60))
        snapshot = demo.step("CreateSnapshot: a full copy, held by a stopped VM", lambda: controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name=f"snap-{uuid.uuid4()}", source_volume_id=vid), timeout=120).snapshot)
        restored = demo.step("CreateVolume from the snapshot", lambda: controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=f"pvc-{uuid.uuid4()}", capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB), volume_capabilities=[capability],
            parameters={"storage": "local-lvm"}, volume_content_source=csi_pb2.VolumeContentSource(
                snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id))), timeout=120).volume)
        demo.step("ListVolumes", lambda: controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30))
        demo.step("ControllerUnpublishVolume: detach from k8s-node-1", lambda: controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=info.node_id), timeout=60))
        demo.step("DeleteVolume (the restored one)", lambda: controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=restored.volume_id), timeout=60))
        demo.step("DeleteSnapshot", lambda: controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id), timeout=60))
        demo.step("DeleteVolume", lambda: controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid), timeout=60))
        with urllib.request.urlopen(simulator + "/_sim/state") as response:
            state = json.loads(response.read())["data"]
        left = [v for s in state["storages"].values() for v in s["volumes"] if "vm-9999" in v]
        print(f"-- left behind in Proxmox: {left or 'no driver volumes'}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
