"""Guest mode's QMP commands are qemu-server's (proxmox/qemu-server e6352be6,
legacy drive_add branch for QEMU < 10): checked against the strings its own
code builds, on a QEMU stand-in that records what it is sent."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pvesim.guestmode import GuestBridge  # noqa: E402


class RecordingQEMU:
    """Answers vm_devices_list's queries from the devices plugged so far."""

    def __init__(self, present=("scsihw0",)):
        self.present = set(present)
        self.sent = []

    def hmp(self, line):
        self.sent.append(line)
        verb, _, rest = line.partition(" ")
        if verb == "device_add":
            self.present.add(dict(p.split("=", 1) for p in rest.split(",") if "=" in p)["id"])
        elif verb == "device_del":
            self.present.discard(rest)
        return "OK\r\n" if verb == "drive_add" else ""

    def execute(self, command, **arguments):
        self.sent.append((command, arguments))
        if command == "query-pci":
            return [{"devices": [{"qdev_id": d} for d in sorted(self.present)]}]
        if command in ("query-block", "query-iothreads"):
            return []
        return {}


class Volume:
    path = "/data/vm-9999-disk-0.raw"


def bridge(qemu):
    bridge = GuestBridge(100, "/unused", sleep=lambda _: None)
    bridge._qmp = qemu
    return bridge


def test_a_scsi_disk_on_virtio_scsi_pci_is_plugged_as_qemu_server_plugs_it():
    qemu = RecordingQEMU()
    bridge(qemu).plug({"scsihw": "virtio-scsi-pci"}, "scsi1",
                      "ceph:vm-9999-disk-0,serial=pvc-abc,wwn=0x5056432d49443031,size=1G", Volume)
    lines = [s for s in qemu.sent if isinstance(s, str)]
    assert lines == [
        'drive_add auto "file=/data/vm-9999-disk-0.raw,if=none,id=drive-scsi1,format=raw,cache=none,aio=io_uring,detect-zeroes=on"',
        "device_add driver=scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=1,drive=drive-scsi1,id=scsi1,"
        "wwn=0x5056432d49443031,serial=pvc-abc",
    ]


def test_a_virtio_disk_gets_its_pci_slot_iothread_and_unescaped_serial():
    qemu = RecordingQEMU()
    bridge(qemu).plug({}, "virtio2", "ceph:vm-9999-disk-0,iothread=1,serial=pvc%2Cx,discard=on", Volume)
    assert ("object-add", {"qom-type": "iothread", "id": "iothread-virtio2"}) in qemu.sent
    lines = [s for s in qemu.sent if isinstance(s, str)]
    assert lines[0].endswith(",discard=on,format=raw,cache=none,aio=io_uring,detect-zeroes=unmap\"")
    assert lines[1] == ("device_add driver=virtio-blk-pci,drive=drive-virtio2,id=virtio2,bus=pci.0,addr=0xc,"
                        "iothread=iothread-virtio2,serial=pvc,,x")


@pytest.mark.parametrize("key,bus,address", [("virtio0", "pci.0", "0xa"), ("virtio5", "pci.0", "0xf"),
                                             ("virtio6", "pci.2", "0x1"), ("virtio15", "pci.2", "0xa")])
def test_virtio_disks_sit_where_qemu_servers_pci_map_puts_them(key, bus, address):
    qemu = RecordingQEMU()
    bridge(qemu).plug({}, key, "ceph:vm-9999-disk-0", Volume)
    assert f",bus={bus},addr={address}" in [s for s in qemu.sent if isinstance(s, str)][-1]


def test_virtio_scsi_single_gives_each_disk_a_controller_behind_the_pci_3_bridge():
    qemu = RecordingQEMU(present=())
    bridge(qemu).plug({"scsihw": "virtio-scsi-single"}, "scsi3", "ceph:vm-9999-disk-0", Volume)
    lines = [s for s in qemu.sent if isinstance(s, str)]
    assert lines[0] == "device_add driver=pci-bridge,id=pci.3,chassis_nr=3,bus=pci.0,addr=0x5"
    assert lines[1] == "device_add driver=virtio-scsi-pci,id=virtioscsi3,bus=pci.3,addr=0x4"
    assert lines[-1].startswith("device_add driver=scsi-hd,bus=virtioscsi3.0,channel=0,scsi-id=0,lun=3,")


def test_an_unplug_waits_for_the_guest_then_deletes_the_drive():
    qemu = RecordingQEMU(present=("scsihw0", "scsi1"))
    bridge(qemu).unplug({"scsihw": "virtio-scsi-pci"}, "scsi1")
    assert [s for s in qemu.sent if isinstance(s, str)] == ["device_del scsi1", "drive_del drive-scsi1"]


def test_a_disk_the_guest_keeps_fails_the_unplug_as_qemu_server_does():
    qemu = RecordingQEMU(present=("scsihw0", "scsi1"))
    qemu.hmp = lambda line: (qemu.sent.append(line), "")[1]  # the guest never lets go
    with pytest.raises(RuntimeError, match="still busy in guest"):
        bridge(qemu).unplug({"scsihw": "virtio-scsi-pci"}, "scsi1")
    assert "drive_del drive-scsi1" not in qemu.sent


def test_a_resize_is_rounded_up_to_whole_kib():
    qemu = RecordingQEMU()
    bridge(qemu).resize("scsi1", 10 * 2**30 + 1)
    assert ("block_resize", {"device": "drive-scsi1", "size": 10 * 2**30 + 1024}) in qemu.sent
