"""The node service inside a real guest kernel (a Debian kernel under QEMU),
its disks hot-plugged with qemu-server's own QMP commands: by the simulator
when the controller attaches (guest mode), or by a spec directly."""
import concurrent.futures
import re
import time
import uuid

import grpc
import pytest

import csi_pb2
from conftest import VMID

GiB = 1 << 30
KUBELET = "/var/lib/kubelet"


def mount_capability(fs_type, mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER, flags=()):
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))


BLOCK = csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                 access_mode=csi_pb2.VolumeCapability.AccessMode(mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))


def code_of(call):
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


class Volume:
    """One PVC's volume through the whole chain, with kubelet's paths in the guest."""

    def __init__(self, bed, bus, fs_type, size=GiB):
        self.bed, self.bus, self.fs_type = bed, bus, fs_type
        self.name = f"pvc-{uuid.uuid4()}"
        capability = BLOCK if fs_type is None else mount_capability(fs_type)
        self.capability = capability
        self.csi = bed.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=self.name, capacity_range=csi_pb2.CapacityRange(required_bytes=size), volume_capabilities=[capability],
            parameters={"storage": "ceph", "bus": bus}), timeout=60).volume
        self.id = self.csi.volume_id
        self.staging = f"{KUBELET}/plugins/kubernetes.io/csi/proxmox/{self.name}/globalmount"
        self.target = f"{KUBELET}/pods/{uuid.uuid4()}/volumes/kubernetes.io~csi/{self.name}/mount"
        self.context = {}

    def attach(self):
        response = self.bed.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=self.id, node_id=self.bed.node_id, volume_capability=self.capability,
            volume_context=self.csi.volume_context), timeout=120)
        self.context = dict(response.publish_context)
        return self.context

    def detach(self):
        self.bed.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=self.id, node_id=self.bed.node_id), timeout=120)

    def stage(self, capability=None):
        self.bed.vm.sh_ok(f"mkdir -p {self.staging}")
        self.bed.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=self.id, publish_context=self.context, staging_target_path=self.staging,
            volume_capability=capability or self.capability, volume_context=self.csi.volume_context), timeout=120)

    def unstage(self):
        self.bed.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=self.id, staging_target_path=self.staging),
                                        timeout=60)

    def publish(self, readonly=False, target=None):
        self.bed.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=self.id, publish_context=self.context, staging_target_path=self.staging,
            target_path=target or self.target, volume_capability=self.capability, readonly=readonly,
            volume_context=self.csi.volume_context), timeout=60)

    def unpublish(self, target=None):
        self.bed.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=self.id, target_path=target or self.target),
                                          timeout=60)

    def stats(self, path=None):
        return self.bed.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=self.id, volume_path=path or self.target),
                                                timeout=30)

    def delete(self):
        self.bed.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=self.id), timeout=60)

    def guest_device(self):
        """The guest's device for the staged filesystem, from the guest's own mount table."""
        return self.bed.mounted_source(self.staging)


@pytest.fixture(scope="module")
def node_id(bed):
    """NodeGetInfo in the guest: the node names its VM from the SMBIOS uuid QEMU shows, not from its own name."""
    info = bed.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=30)
    bed.node_id = info.node_id
    return info


@pytest.fixture
def volumes(bed, node_id):
    made = []

    def make(bus="scsi", fs_type="xfs", size=GiB):
        made.append(Volume(bed, bus, fs_type, size))
        return made[-1]
    yield make
    for volume in made:
        bed.vm.sh(f"umount {volume.target} 2>/dev/null; umount {volume.staging} 2>/dev/null")
        for step in (volume.detach, volume.delete):
            code_of(step)


def test_node_get_info_finds_its_vm_by_the_smbios_uuid_qemu_shows(bed, node_id):
    assert bed.vm.sh_ok("cat /sys/class/dmi/id/product_uuid").strip().lower() == bed.vm.uuid
    assert node_id.node_id == f"sim/{VMID}"
    assert dict(node_id.accessible_topology.segments) == {"topology.kubernetes.io/region": "sim",
                                                          "topology.kubernetes.io/zone": "pve1"}
    assert node_id.max_volumes_per_node == 30  # 31 SCSI slots, one taken by the VM's own scsi0


@pytest.mark.parametrize("bus,fs_type", [("scsi", "xfs"), ("virtio", "ext4")])
def test_a_volume_lives_its_whole_life_and_keeps_its_data(bed, volumes, bus, fs_type):
    volume = volumes(bus, fs_type)
    context = volume.attach()
    assert context["bus"] == bus and ("lun" in context) == (bus == "scsi")
    volume.stage()
    device = volume.guest_device()
    assert re.fullmatch(r"/dev/(sd[a-z]+|vd[a-z]+)", device), device
    assert device.startswith("/dev/sd" if bus == "scsi" else "/dev/vd")
    first_uuid = bed.vm.sh_ok(f"blkid -o value -s UUID {device}").strip()
    volume.publish()
    bed.vm.sh_ok(f"echo precious > {volume.target}/data && sync")
    volume.publish()  # kubelet retries: the same answer
    volume.unpublish()
    volume.unstage()
    assert volume.guest_device() is None
    # Staged again, the filesystem is found, never made anew.
    volume.stage()
    assert bed.vm.sh_ok(f"blkid -o value -s UUID {volume.guest_device()}").strip() == first_uuid
    volume.publish()
    assert bed.vm.sh_ok(f"cat {volume.target}/data").strip() == "precious"
    stats = volume.stats()
    by_unit = {u.unit: u for u in stats.usage}
    assert not stats.volume_condition.abnormal
    assert 0.9 * GiB < by_unit[csi_pb2.VolumeUsage.BYTES].total <= GiB and by_unit[csi_pb2.VolumeUsage.INODES].used > 0
    volume.unpublish()
    volume.unstage()
    volume.detach()
    # qemu-server's unplug: the guest let go of the disk.
    assert not re.search(rf"\b{device[5:]}\b", bed.vm.sh_ok("ls /sys/block"))
    volume.delete()


def test_a_disk_holding_another_filesystem_is_refused_and_left_intact(bed, volumes):
    volume = volumes("scsi", "xfs")
    volume.attach()
    serial = volume.context["serial"]
    device = bed.vm.sh_ok(f"for d in /sys/block/sd*; do grep -qas {serial} $d/device/vpd_pg80 && echo /dev/${{d##*/}}; done").strip()
    bed.vm.sh_ok(f"mkfs.ext4 -q -L theirs {device}")
    before = bed.vm.sh_ok(f"blkid {device}")
    code, message = code_of(volume.stage)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "ext4" in message
    assert bed.vm.sh_ok(f"blkid {device}") == before


def test_online_expansion_after_qemu_block_resize(bed, volumes):
    volume = volumes("scsi", "xfs")
    volume.attach()
    volume.stage()
    volume.publish()
    grown = bed.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume.id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB),
        volume_capability=volume.capability), timeout=60)
    assert grown.node_expansion_required
    response = bed.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
        volume_id=volume.id, volume_path=volume.target, staging_target_path=volume.staging,
        capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB), volume_capability=volume.capability), timeout=120)
    assert response.capacity_bytes == 2 * GiB
    total = {u.unit: u for u in volume.stats().usage}[csi_pb2.VolumeUsage.BYTES].total
    assert total > 1.8 * GiB


def test_a_raw_block_volume_is_published_and_a_read_only_one_refuses_writes(bed, volumes):
    volume = volumes("virtio", None)
    volume.attach()
    volume.stage()
    volume.publish()
    bed.vm.sh_ok(f"dd if=/dev/zero of={volume.target} bs=4096 count=1 oflag=direct status=none")
    assert {u.unit: u for u in volume.stats().usage}[csi_pb2.VolumeUsage.BYTES].total == GiB
    volume.unpublish()
    read_only = f"{KUBELET}/pods/{uuid.uuid4()}/volumeDevices/kubernetes.io~csi/{volume.name}"
    volume.publish(readonly=True, target=read_only)
    status, output = bed.vm.sh(f"dd if=/dev/zero of={read_only} bs=4096 count=1 oflag=direct status=none")
    assert status != 0, "a read-only block target took a write"
    bed.vm.sh_ok(f"dd if={read_only} of=/dev/null bs=4096 count=1 status=none")
    volume.unpublish(target=read_only)


def test_an_unplug_while_staged_is_an_abnormal_condition_and_unstage_still_cleans_up(bed, volumes):
    volume = volumes("scsi", "xfs")
    volume.attach()
    volume.stage()
    volume.publish()
    bed.vm.sh_ok(f"echo x > {volume.target}/before && sync")
    volume.detach()  # the disk leaves the VM under the mounted filesystem
    # A writer meets the missing disk: XFS shuts down, and every stat answers EIO.
    bed.vm.sh(f"dd if=/dev/zero of={volume.target}/after bs=1M count=4 conv=fsync status=none")
    stats = volume.stats()
    assert stats.volume_condition.abnormal, stats
    assert re.search(r"gone|shut down|does not answer", stats.volume_condition.message)
    volume.unpublish()
    volume.unstage()
    assert volume.guest_device() is None


def direct_volume_id(name):
    return f"sim//ceph/vm-9999-{name}"


def stage_direct(bed, volume_id, context, staging, fs_type="ext4", timeout=60):
    bed.vm.sh_ok(f"mkdir -p {staging}")
    bed.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=volume_id, publish_context=context, staging_target_path=staging,
        volume_capability=mount_capability(fs_type)), timeout=timeout)


def unstage_direct(bed, volume_id, staging):
    bed.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging), timeout=60)


def test_two_disks_with_near_identical_serials_are_told_apart(bed, node_id):
    # virtio-blk shows at most 20 bytes of a serial; these differ in the last one.
    serials = {"virtio8": "csi-0123456789abcdef", "virtio9": "csi-0123456789abcdee"}
    for key, serial in serials.items():
        bed.plug(key, serial=serial)
    try:
        for key, serial in serials.items():
            staging = f"{KUBELET}/plugins/near/{key}"
            stage_direct(bed, direct_volume_id(key), {"serial": serial, "bus": "virtio"}, staging)
            device = bed.mounted_source(staging)
            assert bed.vm.sh_ok(f"cat /sys/block/{device[5:]}/serial").strip() == serial
            unstage_direct(bed, direct_volume_id(key), staging)
    finally:
        for key in serials:
            bed.unplug(key)


def test_a_disk_plugged_seconds_after_node_stage_started_is_found_and_other_calls_go_on(bed, node_id):
    staging = f"{KUBELET}/plugins/late/scsi20"
    serial, volume_id = "csi-late00000000001", direct_volume_id("late")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        stages = [pool.submit(stage_direct, bed, volume_id, {"serial": serial, "bus": "scsi", "lun": "20"}, staging)]
        # Others waiting for disks that never come (every node awaiting its first volume).
        stages += [pool.submit(code_of, lambda n=n: stage_direct(bed, direct_volume_id(f"never{n}"),
                                                               {"serial": f"csi-never{n}", "bus": "scsi", "lun": str(25 + n)},
                                                               f"{KUBELET}/plugins/never/{n}"))
                   for n in range(3)]
        time.sleep(3)
        # While they wait, the node answers within livenessprobe's 1 s deadline.
        for _ in range(5):
            bed.identity.Probe(csi_pb2.ProbeRequest(), timeout=1)
            bed.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=1)
        bed.plug("scsi20", serial=serial)
        try:
            stages[0].result(timeout=60)
            assert bed.mounted_source(staging).startswith("/dev/sd")
            unstage_direct(bed, volume_id, staging)
        finally:
            bed.unplug("scsi20")
        for never in stages[1:]:
            assert never.result(timeout=60)[0] == grpc.StatusCode.NOT_FOUND


def test_a_disk_attached_the_way_proxmox_csi_plugin_attaches_is_found_by_its_slot_wwn(bed, node_id):
    # proxmox-csi-plugin pkg/csi/utils.go attachVolume: wwn = hex("PVC-ID%02d" % lun), no serial.
    wwn = "0x" + "PVC-ID07".encode().hex()
    bed.plug("scsi7", wwn=wwn)
    staging = f"{KUBELET}/plugins/plugin-made/scsi7"
    try:
        stage_direct(bed, direct_volume_id("plugin-made"), {"wwn": wwn, "lun": "7"}, staging)
        device = bed.mounted_source(staging)
        assert bed.vm.sh_ok(f"cat /sys/block/{device[5:]}/device/wwid").strip() == "naa." + wwn[2:]
        unstage_direct(bed, direct_volume_id("plugin-made"), staging)
    finally:
        bed.unplug("scsi7")


def test_hundreds_of_mounts_on_the_node_hide_nothing(bed, volumes):
    bed.vm.sh_ok("for i in $(seq 300); do mkdir -p /run/noise/$i && mount -t tmpfs -o size=16k noise$i /run/noise/$i; done")
    try:
        assert int(bed.vm.sh_ok("wc -l < /proc/self/mountinfo")) > 300
        volume = volumes("scsi", "ext4")
        volume.attach()
        volume.stage()
        volume.publish()
        volume.unpublish()
        volume.unstage()
        assert volume.guest_device() is None
    finally:
        bed.vm.sh("for d in /run/noise/*; do umount $d; done")


def test_ext4_that_met_an_error_is_reported_although_mountinfo_says_rw(bed, volumes):
    volume = volumes("scsi", "ext4")
    volume.attach()
    volume.stage()
    volume.publish()
    device = volume.guest_device()[5:]
    bed.vm.sh_ok(f"echo 1 > /sys/fs/ext4/{device}/trigger_fs_error")
    # 6.1 stops writes but keeps saying rw: neither the mount nor the superblock options show it.
    line = next(l for l in bed.vm.sh_ok("cat /proc/self/mountinfo").splitlines() if l.split()[4] == volume.staging)
    assert "ro" not in line.split()[5].split(",") and "ro" not in line.split()[-1].split(","), line
    assert bed.vm.sh(f"touch {volume.target}/after-error")[0] != 0
    stats = volume.stats()
    assert stats.volume_condition.abnormal and "recorded" in stats.volume_condition.message, stats
    volume.unpublish()
    volume.unstage()


def test_a_native_snapshot_of_a_mounted_volume_holds_what_was_written_before_it(bed, volumes, node_id):
    """rbd (issue 15): the snapshot is a VM snapshot of the driver's source VM, taken while the
    volume stays attached and mounted; a volume restored from it has what was synced before, not after."""
    volume = volumes("scsi", "xfs")
    volume.attach()
    volume.stage()
    volume.publish()
    bed.vm.sh_ok(f"echo before > {volume.target}/data && sync")
    snapshot = bed.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=f"snap-{uuid.uuid4()}", source_volume_id=volume.id), timeout=120).snapshot
    assert snapshot.ready_to_use
    bed.vm.sh_ok(f"echo after > {volume.target}/data && sync")
    assert bed.sim("GET", "/_sim/state")["double_attachments"] == []
    restored = bed.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=f"pvc-{uuid.uuid4()}", volume_capabilities=[volume.capability], parameters={"storage": "ceph"},
        capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
        volume_content_source=csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(
            snapshot_id=snapshot.snapshot_id))), timeout=180).volume
    copy = Volume.__new__(Volume)
    copy.__dict__.update(bed=bed, bus="scsi", fs_type="xfs", name=f"pvc-restored-{uuid.uuid4()}", capability=volume.capability,
                         csi=restored, id=restored.volume_id, context={})
    copy.staging = f"{KUBELET}/plugins/kubernetes.io/csi/proxmox/{copy.name}/globalmount"
    copy.target = f"{KUBELET}/pods/{uuid.uuid4()}/volumes/kubernetes.io~csi/{copy.name}/mount"
    try:
        copy.attach()
        copy.stage()
        assert bed.vm.sh_ok(f"cat {copy.staging}/data").strip() == "before"
        assert bed.vm.sh_ok(f"cat {volume.target}/data").strip() == "after"
        copy.unstage()
        copy.detach()
    finally:
        code_of(copy.delete)
        bed.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id), timeout=60)
