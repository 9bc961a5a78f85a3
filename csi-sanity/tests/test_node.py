"""The Node service end to end, as kubelet and the sidecars drive it: the
controller attaches a disk to VM 100 in the simulator, whose local mode
makes it a real loop device described under $KUBELET_DIR/sys; the node
finds it by serial, formats, mounts, grows and reports it.

Needs csi-sanity/run's driver and simulator in local mode (root, loop devices)."""
import os
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest

import csi_pb2
import csi_pb2_grpc

pytestmark = pytest.mark.skipif(not os.environ.get("SIM_LOCAL_MODE"),
                                reason="needs csi-sanity/run's simulator in local mode (root and loop devices)")
GiB = 1 << 30
MiB = 1 << 20
NODE = "k8s-node-1"
Mode = csi_pb2.VolumeCapability.AccessMode


def kubelet():
    return Path(os.environ["KUBELET_DIR"])


@pytest.fixture
def controller(channel):
    return csi_pb2_grpc.ControllerStub(channel)


@pytest.fixture
def node(channel):
    return csi_pb2_grpc.NodeStub(channel)


def mount_cap(fs="xfs", mode=Mode.SINGLE_NODE_WRITER, flags=()):
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs, mount_flags=list(flags)),
                                    access_mode=Mode(mode=mode))


def block_cap():
    return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))


def code_of(call, request):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=60)
    return caught.value.code(), caught.value.details()


def mountinfo(path):
    """(fstype, source, options, super options) mounted at `path`, or None."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        sep = fields.index("-")
        if fields[4] == str(path):
            return fields[sep + 1], fields[sep + 2], fields[5].split(","), fields[sep + 3].split(",")
    return None


def has_capability(bit):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("CapEff:"))
    return int(line.split()[1], 16) >> bit & 1 == 1


class Volume:
    """One PVC's volume walked through the calls kubelet and the sidecars make."""

    def __init__(self, controller, node, capability, size=GiB, source=None):
        self.controller, self.node, self.capability = controller, node, capability
        request = csi_pb2.CreateVolumeRequest(name=f"pvc-{uuid.uuid4()}", capacity_range=csi_pb2.CapacityRange(required_bytes=size),
                                              volume_capabilities=[capability], parameters={"storage": "ceph"})
        if source:
            request.volume_content_source.snapshot.snapshot_id = source
        self.volume = controller.CreateVolume(request, timeout=120).volume
        self.id = self.volume.volume_id
        name = self.id.rsplit("/", 1)[1]
        self.staging = kubelet() / "plugins" / "staging" / name
        self.target = kubelet() / "pods" / name / "volume"
        self.publish_context = {}

    def attach(self):
        self.publish_context = dict(self.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=self.id, node_id=NODE, volume_capability=self.capability, volume_context=self.volume.volume_context),
            timeout=60).publish_context)
        return self

    def stage(self):
        self.staging.mkdir(parents=True, exist_ok=True)
        self.node.NodeStageVolume(self.stage_request(), timeout=120)
        return self

    def stage_request(self, **overrides):
        request = dict(volume_id=self.id, staging_target_path=str(self.staging), volume_capability=self.capability,
                       publish_context=self.publish_context, volume_context=self.volume.volume_context)
        request.update(overrides)
        return csi_pb2.NodeStageVolumeRequest(**request)

    def publish(self, readonly=False, capability=None):
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging), target_path=str(self.target),
            volume_capability=capability or self.capability, publish_context=self.publish_context, readonly=readonly,
            volume_context=self.volume.volume_context), timeout=60)
        return self

    def unpublish(self):
        self.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=self.id, target_path=str(self.target)), timeout=60)

    def unstage(self):
        self.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=self.id, staging_target_path=str(self.staging)), timeout=60)

    def stats(self, path=None):
        return self.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=self.id, volume_path=str(path or self.target)), timeout=60)

    def release(self):
        """Everything back, as kubelet and the sidecars would, tolerating what is already done."""
        self.unpublish()
        self.unstage()
        self.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=self.id, node_id=NODE), timeout=60)
        self.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=self.id), timeout=60)


@pytest.fixture
def volumes(controller, node):
    made = []

    def make(capability, **kwargs):
        volume = Volume(controller, node, capability, **kwargs)
        made.append(volume)
        return volume

    yield make
    for volume in reversed(made):
        volume.release()


def test_capabilities_are_what_is_served(node):
    caps = {c.rpc.type for c in node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=5).capabilities}
    RPC = csi_pb2.NodeServiceCapability.RPC
    assert caps == {RPC.STAGE_UNSTAGE_VOLUME, RPC.EXPAND_VOLUME, RPC.GET_VOLUME_STATS, RPC.VOLUME_CONDITION, RPC.SINGLE_NODE_MULTI_WRITER}


def test_node_info_comes_from_the_vm_found_by_smbios(node):
    info = node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=30)
    assert info.node_id == NODE
    assert dict(info.accessible_topology.segments) == {"topology.kubernetes.io/region": "sim", "topology.kubernetes.io/zone": "pve1"}
    # VM 100's own disk takes scsi0: 30 of the 31 SCSI slots are left for volumes.
    assert info.max_volumes_per_node == 30


def test_a_vm_named_unlike_its_node_is_found_by_smbios(start_driver):
    driver = start_driver("--mode", "node", "--config", os.environ["CSI_CONFIG"], "--node-id", "worker-renamed",
                          "--sys-root", str(kubelet() / "sys"), "--kubelet-dir", str(kubelet()))
    with grpc.insecure_channel(driver.target) as channel:
        info = csi_pb2_grpc.NodeStub(channel).NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=30)
    # The controller resolves cluster/vmid as well as a VM name.
    assert info.node_id == "sim/100"
    assert info.accessible_topology.segments["topology.kubernetes.io/zone"] == "pve1"


def test_without_a_config_topology_comes_from_the_flags(start_driver):
    driver = start_driver("--mode", "node", "--node-id", "worker-9", "--region", "east", "--zone", "pve7")
    with grpc.insecure_channel(driver.target) as channel:
        info = csi_pb2_grpc.NodeStub(channel).NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=30)
    assert info.node_id == "worker-9"
    assert dict(info.accessible_topology.segments) == {"topology.kubernetes.io/region": "east", "topology.kubernetes.io/zone": "pve7"}


@pytest.mark.parametrize("fs", ["xfs", "ext4"])
def test_a_volume_lives_through_stage_publish_and_restage(volumes, fs):
    volume = volumes(mount_cap(fs)).attach().stage().publish()
    fstype, source, _, super_options = mountinfo(volume.staging)
    assert fstype == fs and source.startswith("/dev/loop")
    if fs == "xfs":
        assert "nouuid" in super_options
    (volume.target / "hello.txt").write_text("written through the pod's mount")
    stats = volume.stats()
    in_bytes = next(u for u in stats.usage if u.unit == csi_pb2.VolumeUsage.BYTES)
    assert 0.9 * GiB < in_bytes.total <= GiB and not stats.volume_condition.abnormal
    assert any(u.unit == csi_pb2.VolumeUsage.INODES and u.total > 0 for u in stats.usage)

    volume.unpublish()
    assert not volume.target.exists()
    volume.unstage()
    assert mountinfo(volume.staging) is None
    volume.stage().publish()
    assert (volume.target / "hello.txt").read_text() == "written through the pod's mount"


@pytest.mark.parametrize("fs", ["xfs", pytest.param("ext4", marks=pytest.mark.skipif(
    not has_capability(24), reason="ext4 online resize needs CAP_SYS_RESOURCE, which this root lacks"))])
def test_online_expansion_reaches_the_filesystem(controller, node, volumes, fs):
    volume = volumes(mount_cap(fs)).attach().stage().publish()
    before = os.statvfs(volume.target)
    grown = controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume.id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB), volume_capability=volume.capability), timeout=60)
    assert grown.capacity_bytes == 2 * GiB and grown.node_expansion_required
    expanded = node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
        volume_id=volume.id, volume_path=str(volume.target), staging_target_path=str(volume.staging),
        capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB), volume_capability=volume.capability), timeout=60)
    assert expanded.capacity_bytes == 2 * GiB
    after = os.statvfs(volume.target)
    assert after.f_blocks * after.f_frsize > 1.8 * GiB > before.f_blocks * before.f_frsize


def test_block_access_gives_the_pod_the_device(volumes):
    volume = volumes(block_cap()).attach().stage().publish()
    assert mountinfo(volume.staging) is None, "block access has no staging mount"
    assert os.path.isfile(volume.target) is False and os.stat(volume.target).st_rdev != 0
    with open(volume.target, "r+b") as device:
        device.write(b"raw bytes")
    with open(find_loop(volume), "rb") as device:
        assert device.read(9) == b"raw bytes"
    stats = volume.stats()
    assert stats.usage[0].total == GiB and stats.usage[0].unit == csi_pb2.VolumeUsage.BYTES
    code, details = code_of(volume.node.NodePublishVolume, csi_pb2.NodePublishVolumeRequest(
        volume_id=volume.id, staging_target_path=str(volume.staging), target_path=str(volume.target),
        volume_capability=mount_cap("ext4"), publish_context=volume.publish_context))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "block" in details


@pytest.mark.parametrize("capability", [
    mount_cap(mode=Mode.SINGLE_NODE_SINGLE_WRITER),
    csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                             access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_SINGLE_WRITER)),
], ids=["mount", "block"])
def test_a_single_writer_volume_is_published_at_one_target_only(volumes, capability):
    volume = volumes(capability).attach().stage().publish()
    other = volume.target.parent.parent / "other-pod" / "volume"
    other.parent.mkdir(parents=True, exist_ok=True)

    request = csi_pb2.NodePublishVolumeRequest(
        volume_id=volume.id, staging_target_path=str(volume.staging), target_path=str(other),
        volume_capability=capability, publish_context=volume.publish_context)
    code, details = code_of(volume.node.NodePublishVolume, request)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and str(volume.target) in details, details
    assert not other.exists(), "nothing was made at the refused target"
    # The same target again is fine (idempotent); once unpublished, another target may take it.
    volume.publish()
    volume.unpublish()
    volume.node.NodePublishVolume(request, timeout=60)
    volume.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.id, target_path=str(other)), timeout=60)


def test_a_disk_holding_another_filesystem_is_refused_and_kept(volumes):
    volume = volumes(mount_cap("xfs")).attach()
    volume.capability = block_cap()
    volume.stage().publish()
    subprocess.run(["mkfs.ext4", "-q", "-L", "keepme", find_loop(volume)], check=True)
    volume.unpublish()
    volume.capability = mount_cap("xfs")
    volume.staging.mkdir(parents=True, exist_ok=True)
    code, details = code_of(volume.node.NodeStageVolume, volume.stage_request())
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "refusing to format" in details
    assert mountinfo(volume.staging) is None
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", find_loop(volume)], capture_output=True, text=True).stdout.strip()
    assert label == "keepme"


def find_loop(volume):
    """The loop device of an attached disk, from the simulator's sysfs tree."""
    serial = volume.publish_context["serial"]
    for entry in (kubelet() / "sys" / "block").iterdir():
        page = entry / "device" / "vpd_pg80"
        if (entry / "serial").exists() and (entry / "serial").read_text().strip() == serial:
            return f"/dev/{entry.name}"
        if page.exists() and page.read_bytes()[4:].decode() == serial:
            return f"/dev/{entry.name}"
    raise AssertionError(f"no disk with serial {serial}")


@pytest.fixture
def snapshot_of(controller):
    taken = []

    def take(volume):
        snapshot = controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name=f"snap-{uuid.uuid4()}", source_volume_id=volume.id),
                                             timeout=120).snapshot
        taken.append(snapshot.snapshot_id)
        return snapshot

    yield take
    for snapshot_id in taken:
        controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id), timeout=120)


def test_a_restored_xfs_copy_mounts_beside_its_original(volumes, snapshot_of):
    original = volumes(mount_cap("xfs")).attach().stage().publish()
    (original.target / "data.txt").write_text("before the snapshot")
    original.unpublish()
    original.unstage()
    snapshot = snapshot_of(original)
    copy = volumes(mount_cap("xfs"), source=snapshot.snapshot_id).attach().stage().publish()
    original.stage().publish()
    # Same filesystem UUID on both disks: only `nouuid` lets xfs mount the second.
    assert mountinfo(copy.staging)[1] != mountinfo(original.staging)[1]
    assert (copy.target / "data.txt").read_text() == "before the snapshot"
    (copy.target / "data.txt").write_text("changed in the copy")
    assert (original.target / "data.txt").read_text() == "before the snapshot"


def test_a_read_only_publish_refuses_writes(volumes):
    volume = volumes(mount_cap("ext4")).attach().stage().publish(readonly=True)
    with pytest.raises(OSError):
        (volume.target / "nope").write_text("x")
    assert "ro" in mountinfo(volume.target)[2]


VOLUME = "sim//ceph/vm-9999-pvc-none"


@pytest.mark.parametrize("rpc, message, field", [
    ("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(), "volume_id"),
    ("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(volume_id=VOLUME), "staging_target_path"),
    ("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(volume_id=VOLUME, staging_target_path="KUBELET/s"), "volume_capability"),
    ("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(volume_id=VOLUME, staging_target_path="relative/s"), "not an absolute path"),
    ("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(volume_id=VOLUME, staging_target_path="/etc/s"), "outside"),
    ("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(volume_id=VOLUME, staging_target_path="KUBELET/../s"), ".."),
    ("NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(), "volume_id"),
    ("NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(volume_id=VOLUME), "staging_target_path"),
    ("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(), "volume_id"),
    ("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(volume_id=VOLUME), "target_path"),
    ("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(volume_id=VOLUME, target_path="KUBELET/t"), "volume_capability"),
    ("NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(), "volume_id"),
    ("NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(volume_id=VOLUME), "target_path"),
    ("NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(), "volume_id"),
    ("NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(volume_id=VOLUME), "volume_path"),
    ("NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(), "volume_id"),
    ("NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(volume_id=VOLUME), "volume_path"),
])
def test_bad_requests_name_the_field(node, rpc, message, field):
    for name in ("staging_target_path", "target_path"):
        if hasattr(message, name) and getattr(message, name).startswith("KUBELET"):
            setattr(message, name, getattr(message, name).replace("KUBELET", str(kubelet())))
    code, details = code_of(getattr(node, rpc), message)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details


def test_volumes_that_are_not_there_are_not_found(node):
    for rpc, request in [
        (node.NodeGetVolumeStats, csi_pb2.NodeGetVolumeStatsRequest(volume_id=VOLUME, volume_path="some/path")),
        (node.NodeGetVolumeStats, csi_pb2.NodeGetVolumeStatsRequest(volume_id=VOLUME, volume_path=str(kubelet() / "nothing"))),
        (node.NodeExpandVolume, csi_pb2.NodeExpandVolumeRequest(volume_id=VOLUME, volume_path="some/path")),
    ]:
        assert code_of(rpc, request)[0] == grpc.StatusCode.NOT_FOUND


def test_unpublish_and_unstage_of_nothing_succeed(node):
    node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=VOLUME, target_path=str(kubelet() / "pods" / "none")), timeout=10)
    node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=VOLUME, staging_target_path=str(kubelet() / "plugins" / "none")), timeout=10)


def test_zz_nothing_is_left_attached_or_mounted():
    # Runs last: every volume above was released through the CSI calls alone.
    assert list((kubelet() / "sys" / "block").iterdir()) == []
    assert [l for l in Path("/proc/self/mountinfo").read_text().splitlines() if f" {kubelet()}/" in l] == []
