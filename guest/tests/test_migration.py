"""Switching from proxmox-csi-plugin with pods running (issue 14, item 6;
docs/migrating-from-proxmox-csi-plugin.md). The simulator and the guest start
from what the plugin (at a7c58ec) leaves behind, made through the Proxmox API
the way it makes it: its volumes (`vm-9999-pvc-<uuid>`, and a dir volume
under the five-part id), a disk it attached (pkg/csi/utils.go attachVolume:
its slot WWN hex("PVC-ID%02d"), no serial, its default backup=0,iothread=1)
that its node staged (xfs, mounted where kubelet stages, bound into a pod),
and the PVs' volume attributes (pkg/csi/parameters.go ToMap). This driver then
serves those pods without a detach, and runs whole lifecycles on the volumes."""
import json
import time
import urllib.parse
import urllib.request
import uuid

import csi_pb2
from conftest import TOKEN, VMID
from test_guest_node import GiB, KUBELET, mount_capability, node_id  # noqa: F401  (fixture)

XFS = mount_capability("xfs")
PLUGIN_ATTRIBUTES = {"storage": "ceph", "backup": "0", "iothread": "1", "replicate": "0"}


def pve(bed, method, path, **params):
    """The Proxmox API as the plugin calls it: a token, form parameters."""
    data = urllib.parse.urlencode(params).encode() if params else None
    request = urllib.request.Request(f"{bed.sim.url}/api2/json{path}", data=data, method=method,
                                     headers={"Authorization": f"PVEAPIToken={TOKEN[0]}={TOKEN[1]}"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["data"]


def wait_task(bed, upid):
    for _ in range(600):
        status = pve(bed, "GET", f"/nodes/pve1/tasks/{urllib.parse.quote(upid)}/status")
        if status["status"] == "stopped":
            assert status.get("exitstatus") == "OK", status
            return
        time.sleep(0.1)
    raise TimeoutError(upid)


def guest_disk_with_wwid(bed, wwn, timeout=30):
    """The guest's device whose SCSI wwid is the WWN (what udev's wwn-0x… link would name)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = bed.vm.sh_ok(f"for d in /sys/block/sd*; do grep -qs naa.{wwn[2:]} $d/device/wwid && echo /dev/${{d##*/}}; done").strip()
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"no disk with WWN {wwn} in the guest")


def plugin_paths(volume_id):
    # kubelet's paths for a CSI volume; the driver's name, and so the paths, stay the same across the switch.
    name = volume_id.replace("/", "-")
    return (f"{KUBELET}/plugins/kubernetes.io/csi/csi.proxmox.sinextra.dev/{name}/globalmount",
            f"{KUBELET}/pods/{uuid.uuid4()}/volumes/kubernetes.io~csi/pv-{name}/mount")


def storage_volumes(bed, storage):
    return {volid for key, s in bed.sim("GET", "/_sim/state")["storages"].items()
            if key.split("@")[0] == storage for volid in s["volumes"]}


def test_a_pod_the_plugin_started_keeps_its_volume_across_the_switch_and_lives_on(bed, node_id):
    pvc = f"pvc-{uuid.uuid4()}"
    disk = f"vm-9999-{pvc}"
    volume_id = f"sim//ceph/{disk}"  # the plugin's shared-storage id: region//storage/disk
    wwn = "0x" + "PVC-ID01".encode().hex()
    # The plugin's CreateVolume and ControllerPublishVolume.
    pve(bed, "POST", "/nodes/pve1/storage/ceph/content", vmid="9999", filename=disk, size="1024M")
    wait_task(bed, pve(bed, "POST", f"/nodes/pve1/qemu/{VMID}/config", scsi1=f"ceph:{disk},backup=0,iothread=1,wwn={wwn}"))
    # The plugin's NodeStageVolume and NodePublishVolume, and the pod writing.
    staging, target = plugin_paths(volume_id)
    device = guest_disk_with_wwid(bed, wwn)
    bed.vm.sh_ok(f"mkfs.xfs -q {device} && mkdir -p {staging} {target} && mount -o nouuid {device} {staging} "
                 f"&& mount --bind {staging} {target} && echo before-the-switch > {target}/data && sync")

    def node_call(method, **fields):
        return getattr(bed.node, method)(getattr(csi_pb2, method + "Request")(volume_id=volume_id, **fields), timeout=120)

    # The switch: this driver's controller and node plugin serve the same CSIDriver name from now on.
    # csi-attacher's resync publishes again: the answer is the identity the plugin's line carries, and nothing is written.
    before = bed.sim.vm_config()
    again = bed.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=bed.node_id, volume_capability=XFS, volume_context=PLUGIN_ATTRIBUTES), timeout=60)
    assert dict(again.publish_context) == {"wwn": wwn, "bus": "scsi", "lun": "1"}
    assert bed.sim.vm_config() == before
    # kubelet's volume stats of the running pod.
    stats = node_call("NodeGetVolumeStats", volume_path=target)
    assert not stats.volume_condition.abnormal, stats.volume_condition.message
    # The PVC is resized while the pod runs.
    grown = bed.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB), volume_capability=XFS), timeout=60)
    assert grown.node_expansion_required
    node_call("NodeExpandVolume", volume_path=target, staging_target_path=staging,
              capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB), volume_capability=XFS)
    assert {u.unit: u for u in node_call("NodeGetVolumeStats", volume_path=target).usage}[csi_pb2.VolumeUsage.BYTES].total > 1.8 * GiB
    # The pod is deleted: its volume is unmounted and detached.
    node_call("NodeUnpublishVolume", target_path=target)
    node_call("NodeUnstageVolume", staging_target_path=staging)
    assert bed.mounted_source(staging) is None and bed.mounted_source(target) is None
    bed.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=bed.node_id), timeout=120)
    assert not [v for v in bed.sim.vm_config().values() if v.startswith(f"ceph:{disk},")]

    # A new pod on the volume, all by this driver: its own identity on the disk, the plugin's data kept.
    published = bed.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=bed.node_id, volume_capability=XFS, volume_context=PLUGIN_ATTRIBUTES), timeout=120)
    context = dict(published.publish_context)
    assert context["serial"].startswith("csi-")
    line = next(v for v in bed.sim.vm_config().values() if v.startswith(f"ceph:{disk},"))
    assert "backup=0" in line and "iothread=1" in line, line
    staging, target = plugin_paths(volume_id)
    bed.vm.sh_ok(f"mkdir -p {staging}")
    node_call("NodeStageVolume", publish_context=context, staging_target_path=staging, volume_capability=XFS,
              volume_context=PLUGIN_ATTRIBUTES)
    node_call("NodePublishVolume", publish_context=context, staging_target_path=staging, target_path=target,
              volume_capability=XFS, volume_context=PLUGIN_ATTRIBUTES)
    assert bed.vm.sh_ok(f"cat {target}/data").strip() == "before-the-switch"
    bed.vm.sh_ok(f"echo after-the-switch >> {target}/data && sync")
    node_call("NodeUnpublishVolume", target_path=target)
    node_call("NodeUnstageVolume", staging_target_path=staging)
    bed.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=bed.node_id), timeout=120)

    # A rollback (the guide's last section): once this driver has detached it, the plugin attaches
    # the volume its own way again and its node finds the disk by the slot WWN, data intact.
    wait_task(bed, pve(bed, "POST", f"/nodes/pve1/qemu/{VMID}/config", scsi1=f"ceph:{disk},backup=0,iothread=1,wwn={wwn}"))
    device = guest_disk_with_wwid(bed, wwn)
    bed.vm.sh_ok(f"mkdir -p /mnt/rollback && mount -o nouuid {device} /mnt/rollback")
    assert bed.vm.sh_ok("cat /mnt/rollback/data").split() == ["before-the-switch", "after-the-switch"]
    bed.vm.sh_ok("umount /mnt/rollback")
    wait_task(bed, pve(bed, "POST", f"/nodes/pve1/qemu/{VMID}/config", delete="scsi1"))
    bed.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=60)
    assert f"ceph:{disk}" not in storage_volumes(bed, "ceph")


def test_a_dir_volume_by_the_plugins_five_part_id_lives_a_whole_life(bed, node_id):
    pvc = f"pvc-{uuid.uuid4()}"
    file = f"vm-9999-{pvc}.raw"
    volume_id = f"sim/pve1/local/9999/{file}"  # region/zone/storage/<vmid>/<file>, as the plugin writes dir volumes
    attributes = {**PLUGIN_ATTRIBUTES, "storage": "local", "storageFormat": "raw"}
    pve(bed, "POST", "/nodes/pve1/storage/local/content", vmid="9999", filename=file, size="1024M", format="raw")

    def publish(vid, context_attributes):
        return dict(bed.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=bed.node_id, volume_capability=XFS, volume_context=context_attributes), timeout=120).publish_context)

    def stage_and_publish(vid, context, context_attributes):
        staging, target = plugin_paths(vid)
        bed.vm.sh_ok(f"mkdir -p {staging}")
        bed.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=vid, publish_context=context, staging_target_path=staging, volume_capability=XFS,
            volume_context=context_attributes), timeout=120)
        bed.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=vid, publish_context=context, staging_target_path=staging, target_path=target,
            volume_capability=XFS, volume_context=context_attributes), timeout=60)
        return staging, target

    def take_down(vid, staging, target):
        bed.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target), timeout=60)
        bed.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging), timeout=60)
        bed.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=bed.node_id), timeout=120)

    staging, target = stage_and_publish(volume_id, publish(volume_id, attributes), attributes)
    bed.vm.sh_ok(f"echo written-after-the-switch > {target}/data && sync")
    take_down(volume_id, staging, target)
    snapshot = bed.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=f"snapshot-{uuid.uuid4()}", source_volume_id=volume_id), timeout=120).snapshot
    assert snapshot.ready_to_use
    restored = bed.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=f"pvc-{uuid.uuid4()}", volume_capabilities=[XFS], parameters={"storage": "local"},
        capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
        volume_content_source=csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(
            snapshot_id=snapshot.snapshot_id))), timeout=120).volume
    staging, target = stage_and_publish(restored.volume_id, publish(restored.volume_id, dict(restored.volume_context)),
                                        dict(restored.volume_context))
    assert bed.vm.sh_ok(f"cat {target}/data").strip() == "written-after-the-switch"
    take_down(restored.volume_id, staging, target)
    for request in (csi_pb2.DeleteVolumeRequest(volume_id=restored.volume_id), csi_pb2.DeleteVolumeRequest(volume_id=volume_id)):
        bed.controller.DeleteVolume(request, timeout=60)
    bed.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id), timeout=60)
    assert f"local:9999/{file}" not in storage_volumes(bed, "local")


def test_a_volume_snapshot_the_plugin_took_is_restored_after_the_switch(bed, node_id):
    """The plugin's CreateSnapshot copies the volume to vm-<controllerVmID>-<snapshot name> beside it
    (local storage only) and answers that volume's id as the snapshot id."""
    snapshot_volume = f"vm-9999-snapshot-{uuid.uuid4()}"
    snapshot_id = f"sim/pve1/local-lvm/{snapshot_volume}"
    wwn = "0x" + "PVC-ID02".encode().hex()
    # The copy's content, put there through the guest as the plugin's copy would have it.
    pve(bed, "POST", "/nodes/pve1/storage/local-lvm/content", vmid="9999", filename=snapshot_volume, size="1024M")
    wait_task(bed, pve(bed, "POST", f"/nodes/pve1/qemu/{VMID}/config", scsi2=f"local-lvm:{snapshot_volume},backup=0,iothread=1,wwn={wwn}"))
    device = guest_disk_with_wwid(bed, wwn)
    bed.vm.sh_ok(f"mkfs.xfs -q {device} && mkdir -p /mnt/snap && mount {device} /mnt/snap && echo in-the-plugins-snapshot > /mnt/snap/data "
                 "&& umount /mnt/snap")
    wait_task(bed, pve(bed, "POST", f"/nodes/pve1/qemu/{VMID}/config", delete="scsi2"))

    restored = bed.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=f"pvc-{uuid.uuid4()}", volume_capabilities=[XFS], parameters={"storage": "local-lvm"},
        capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
        volume_content_source=csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(
            snapshot_id=snapshot_id))), timeout=120).volume
    context = dict(bed.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=restored.volume_id, node_id=bed.node_id, volume_capability=XFS, volume_context=dict(restored.volume_context)),
        timeout=120).publish_context)
    staging, _ = plugin_paths(restored.volume_id)
    bed.vm.sh_ok(f"mkdir -p {staging}")
    bed.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=restored.volume_id, publish_context=context, staging_target_path=staging, volume_capability=XFS), timeout=120)
    assert bed.vm.sh_ok(f"cat {staging}/data").strip() == "in-the-plugins-snapshot"
    bed.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=restored.volume_id, staging_target_path=staging), timeout=60)
    bed.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=restored.volume_id, node_id=bed.node_id), timeout=120)
    bed.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=restored.volume_id), timeout=60)
    bed.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id), timeout=60)
    assert f"local-lvm:{snapshot_volume}" not in storage_volumes(bed, "local-lvm")
