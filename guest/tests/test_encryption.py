"""LUKS2-encrypted volumes in a real guest kernel (issue 16, item 1): a
StorageClass opts in as proxmox-csi-plugin's do, with a node-stage (and
node-expand) secret holding `encryption-passphrase`. The node formats LUKS2
only on a blank disk, opens it through dm-crypt, puts the filesystem (or the
pod's block device) on the mapping, grows it online and closes it at unstage.

cryptsetup in the guest is wrapped for these specs: the wrapper records every
argv and environment it is started with, then runs the real one, so the
passphrase's absence from both is checked on what the driver really ran."""
import re
import time
import uuid

import grpc
import pytest

import csi_pb2
from test_guest_node import BLOCK, GiB, KUBELET, Volume, code_of, mount_capability, node_id  # noqa: F401  (fixture)

PASSPHRASE = f"luks-{uuid.uuid4().hex}\n"  # a trailing newline is part of a key file's bytes
SECRETS = {"encryption-passphrase": PASSPHRASE}
WRONG = {"encryption-passphrase": "not-" + PASSPHRASE}
RECORD = "/tmp/cryptsetup-calls"


@pytest.fixture(scope="module")
def recorded_cryptsetup(bed):
    """Replaces the guest's cryptsetup with a recorder that runs the real one."""
    bed.vm.sh_ok("[ -e /usr/sbin/cryptsetup.real ] || mv /usr/sbin/cryptsetup /usr/sbin/cryptsetup.real")
    bed.vm.write_file("/usr/sbin/cryptsetup", "#!/bin/sh\n"
                      f"{{ echo \"argv: $*\"; tr '\\0' '\\n' < /proc/$$/environ | sed 's/^/env: /'; }} >> {RECORD}\n"
                      "exec /usr/sbin/cryptsetup.real \"$@\"\n", mode="0755")
    bed.vm.sh_ok(f": > {RECORD}")
    yield
    bed.vm.sh_ok("mv /usr/sbin/cryptsetup.real /usr/sbin/cryptsetup")


class EncryptedVolume(Volume):
    def stage(self, capability=None, secrets=SECRETS):
        self.bed.vm.sh_ok(f"mkdir -p {self.staging}")
        self.bed.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=self.id, publish_context=self.context, staging_target_path=self.staging,
            volume_capability=capability or self.capability, volume_context=self.csi.volume_context,
            secrets=secrets), timeout=180)

    def expand(self, size, secrets=SECRETS, path=None):
        return self.bed.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id=self.id, volume_path=path or self.target, staging_target_path=self.staging,
            capacity_range=csi_pb2.CapacityRange(required_bytes=size), volume_capability=self.capability,
            secrets=secrets), timeout=180)

    def disk(self):
        """The guest's raw disk of the volume, found by the serial the controller set."""
        serial = self.context["serial"]
        for _ in range(100):  # a hot-plugged disk appears a moment after the attach
            found = self.bed.vm.sh_ok(
                f"for d in /sys/block/sd* /sys/block/vd*; do {{ grep -qas {serial} $d/device/vpd_pg80 || grep -qs {serial} $d/serial; }} "
                f"&& echo /dev/${{d##*/}}; done; true").strip()
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"no disk with serial {serial} in the guest")

    def mappings(self):
        """The open crypt mappings on the volume's disk, as the guest kernel lists them."""
        name = self.disk()[5:]
        return self.bed.vm.sh_ok(f"for m in /sys/block/dm-*; do [ -e $m/slaves/{name} ] && cat $m/dm/name; done; true").split()


@pytest.fixture
def encrypted(bed, node_id, recorded_cryptsetup):
    made = []

    def make(bus="scsi", fs_type="xfs", size=GiB):
        made.append(EncryptedVolume(bed, bus, fs_type, size))
        return made[-1]
    yield make
    for volume in made:
        bed.vm.sh(f"umount {volume.target} 2>/dev/null; umount {volume.staging} 2>/dev/null; "
                  f"for m in /dev/mapper/csi-*; do cryptsetup.real close ${{m##*/}}; done 2>/dev/null")
        for step in (volume.detach, volume.delete):
            code_of(step)


def assert_passphrase_nowhere(bed):
    calls = bed.vm.sh_ok(f"cat {RECORD}")
    assert re.search(r"^argv: luksFormat .*--key-file=-", calls, re.M), calls
    assert re.search(r"^argv: open .*--key-file=-", calls, re.M), calls
    secret = PASSPHRASE.strip()
    assert secret not in calls, "the passphrase reached cryptsetup's argv or environment"
    assert secret not in bed.vm.console(), "the passphrase reached the node's log"
    assert secret not in (bed.workdir / "controller.log").read_text()


@pytest.mark.parametrize("bus,fs_type", [("scsi", "xfs"), ("virtio", "ext4")])
def test_an_encrypted_volume_lives_its_whole_life_and_keeps_its_data(bed, encrypted, bus, fs_type):
    volume = encrypted(bus, fs_type)
    volume.attach()
    volume.stage()
    disk = volume.disk()
    assert bed.vm.sh_ok(f"blkid -p -o value -s TYPE {disk}").strip() == "crypto_LUKS"
    assert bed.vm.sh_ok(f"blkid -p -o value -s VERSION {disk}").strip() == "2"  # LUKS2
    [mapping] = volume.mappings()
    assert volume.guest_device() == f"/dev/mapper/{mapping}"
    first_uuid = bed.vm.sh_ok(f"blkid -o value -s UUID /dev/mapper/{mapping}").strip()
    volume.stage()  # kubelet retries: the same answer, nothing formatted again
    assert bed.vm.sh_ok(f"blkid -o value -s UUID /dev/mapper/{mapping}").strip() == first_uuid
    # The open mapping is no way past the passphrase.
    code, message = code_of(lambda: volume.stage(secrets=WRONG))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "passphrase" in message, message
    volume.publish()
    bed.vm.sh_ok(f"echo precious > {volume.target}/data && sync")
    # The file's block, where the filesystem put it (FIEMAP, in 512-byte sectors of the mapping),
    # holds the words; the same block on the disk, past the LUKS2 header, holds only ciphertext.
    extents = bed.vm.sh_ok(f"xfs_io -r -c fiemap {volume.target}/data")
    sector = int(re.search(r"\]: (\d+)\.\.", extents).group(1))
    header = int(re.search(r"offset:\s+(\d+) \[bytes\]", bed.vm.sh_ok(f"cryptsetup.real luksDump {disk}")).group(1))
    # Read past the caches in 4 KiB blocks (a LUKS2 mapping may use 4 KiB sectors, and O_DIRECT reads whole ones).
    block = sector * 512 // 4096
    assert "precious" in bed.vm.sh_ok(f"dd if=/dev/mapper/{mapping} bs=4096 skip={block} count=1 iflag=direct status=none | strings")
    assert "precious" not in bed.vm.sh_ok(f"dd if={disk} bs=4096 skip={block + header // 4096} count=1 iflag=direct status=none | strings")
    volume.unpublish()
    volume.unstage()
    assert volume.guest_device() is None and volume.mappings() == []
    volume.stage()
    assert bed.vm.sh_ok(f"blkid -o value -s UUID {volume.guest_device()}").strip() == first_uuid
    volume.publish()
    assert bed.vm.sh_ok(f"cat {volume.target}/data").strip() == "precious"

    grown = bed.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume.id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB),
        volume_capability=volume.capability), timeout=60)
    assert grown.node_expansion_required
    code, message = code_of(lambda: volume.expand(2 * GiB, secrets={}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "encryption-passphrase" in message, message
    code, message = code_of(lambda: volume.expand(2 * GiB, secrets=WRONG))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "passphrase" in message, message
    assert volume.expand(2 * GiB).capacity_bytes == 2 * GiB
    total = {u.unit: u for u in volume.stats().usage}[csi_pb2.VolumeUsage.BYTES].total
    assert 1.8 * GiB < total < 2 * GiB  # the disk less the LUKS2 header (16 MiB)
    assert not volume.stats().volume_condition.abnormal
    assert bed.vm.sh_ok(f"cat {volume.target}/data").strip() == "precious"

    volume.unpublish()
    volume.unstage()
    assert volume.mappings() == []
    volume.detach()
    volume.delete()
    assert_passphrase_nowhere(bed)


def test_a_wrong_passphrase_is_failed_precondition_and_touches_nothing(bed, encrypted):
    volume = encrypted("scsi", "ext4")
    volume.attach()
    volume.stage()
    volume.unstage()
    disk = volume.disk()
    header = bed.vm.sh_ok(f"dd if={disk} bs=1M count=17 status=none | sha256sum")
    code, message = code_of(lambda: volume.stage(secrets=WRONG))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "passphrase" in message, message
    assert PASSPHRASE.strip() not in message
    assert bed.vm.sh_ok(f"dd if={disk} bs=1M count=17 status=none | sha256sum") == header
    assert volume.mappings() == [] and volume.guest_device() is None
    # Without the secret, the LUKS disk is neither formatted nor mounted in the clear.
    code, message = code_of(lambda: volume.stage(secrets={}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "encryption-passphrase" in message, message
    assert bed.vm.sh_ok(f"dd if={disk} bs=1M count=17 status=none | sha256sum") == header


def test_a_disk_that_holds_data_in_the_clear_is_never_encrypted(bed, encrypted):
    volume = encrypted("virtio", "xfs")
    volume.attach()
    disk = volume.disk()
    bed.vm.sh_ok(f"mkfs.xfs -q -L theirs {disk}")
    before = bed.vm.sh_ok(f"blkid -p {disk}")
    code, message = code_of(volume.stage)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "xfs" in message and "in the clear" in message, message
    assert bed.vm.sh_ok(f"blkid -p {disk}") == before and volume.mappings() == []


def test_an_encrypted_raw_block_volume_hands_the_pod_the_mapping(bed, encrypted):
    volume = encrypted("virtio", None)
    volume.attach()
    volume.stage()
    [mapping] = volume.mappings()
    volume.publish()
    # The pod's device file is the mapping, not the disk under it.
    target_number = bed.vm.sh_ok(f"stat -L -c '%t:%T' {volume.target}").strip()
    assert target_number == bed.vm.sh_ok(f"stat -L -c '%t:%T' /dev/mapper/{mapping}").strip()
    pattern = uuid.uuid4().hex
    bed.vm.sh_ok(f"printf {pattern} | dd of={volume.target} bs=4096 conv=sync oflag=direct status=none")
    assert pattern not in bed.vm.sh_ok(f"dd if={volume.disk()} bs=1M skip=16 count=1 iflag=direct status=none | strings")
    blocks = {u.unit: u for u in volume.stats().usage}[csi_pb2.VolumeUsage.BYTES].total
    assert GiB - 32 * (1 << 20) < blocks < GiB
    volume.unpublish()
    volume.unstage()
    assert volume.mappings() == []
    # Staged without its secret (a static PV lacking nodeStageSecretRef), it is refused, not handed over as ciphertext.
    code, message = code_of(lambda: volume.stage(secrets={}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "encryption-passphrase" in message, message
    # A volume staged encrypted whose mapping is gone is never handed over raw.
    bed.vm.sh_ok(f"mkdir -p {volume.staging}")
    volume.stage()
    volume.publish()
    assert bed.vm.sh_ok(f"dd if={volume.target} bs=32 count=1 status=none").strip() == pattern
    volume.unpublish()
    bed.vm.sh_ok(f"cryptsetup.real close {volume.mappings()[0]}")
    code, message = code_of(volume.publish)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "mapping" in message, message
    volume.unstage()
    assert_passphrase_nowhere(bed)


def test_a_volume_proxmox_csi_plugin_encrypted_and_staged_comes_along(bed, encrypted):
    """The plugin's node (pkg/csi/node.go with go-blockdevice's luks: luksFormat --type luks2
    --key-file=- -c aes-xts-plain64, cryptsetup's default PBKDF) encrypted and staged it; this
    driver unstages it, closing the plugin's mapping whatever its name, and stages it again with
    the same secret."""
    volume = encrypted("scsi", "ext4")
    volume.attach()
    disk = volume.disk()
    plugin_mapping = "luks-" + disk[5:]
    bed.vm.write_file("/tmp/plugin-key", PASSPHRASE, mode="0600")  # the secret's bytes, as the plugin pipes them
    key = "cat /tmp/plugin-key"
    bed.vm.sh_ok(f"{key} | cryptsetup.real luksFormat --type luks2 --key-file=- -c aes-xts-plain64 {disk}", timeout=300)
    bed.vm.sh_ok(f"{key} | cryptsetup.real luksOpen {disk} {plugin_mapping} --key-file=-", timeout=120)
    bed.vm.sh_ok(f"mkfs.ext4 -q /dev/mapper/{plugin_mapping} && mkdir -p {volume.staging} "
                 f"&& mount /dev/mapper/{plugin_mapping} {volume.staging} && echo plugin-era > {volume.staging}/data && sync")
    volume.unstage()
    assert volume.mappings() == [] and volume.guest_device() is None
    volume.stage()
    [mapping] = volume.mappings()
    assert mapping.startswith("csi-")
    volume.publish()
    assert bed.vm.sh_ok(f"cat {volume.target}/data").strip() == "plugin-era"
    volume.unpublish()
    volume.unstage()
    assert volume.mappings() == []
    bed.vm.sh_ok("rm /tmp/plugin-key")
