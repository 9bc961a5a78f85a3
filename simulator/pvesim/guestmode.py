"""Guest mode: the simulated VM that stands for a real QEMU guest gets its
disks through QMP, with the commands qemu-server itself sends.

When the simulator hot-plugs a disk into that VM (the config change the
controller wrote), the volume's backing file is plugged into the running
QEMU; an unplug and a resize follow the same way. So the chain
controller -> Proxmox API -> QEMU -> guest kernel -> node service is one.

Every command is qemu-server's, read at proxmox/qemu-server e6352be6
(9.2.6), on its legacy branch: qemu-server takes blockdev-add only for
machine versions >= 10.0, read from pve-qemu's `is-current` field of
query-machines, so a stock QEMU (7.2 in Debian 12) gets drive_add/drive_del
(src/PVE/QemuServer.pm qemu_driveadd, qemu_drivedel;
src/PVE/QemuServer/Machine.pm get_current_qemu_machine).
"""
import re
import threading
import time
import urllib.parse

from .qmp import QMP

# src/PVE/QemuServer/PCI.pm get_pci_addr_map: virtio0..5 on pci.0 at 0xa..0xf,
# virtio6..15 on the bridge pci.2 at 0x1..0xa; scsihw0 on pci.0 at 0x5;
# the virtio-scsi-single bridge pci.3 at 0x5 with virtioscsiN at N+1.
def virtio_pci_address(index):
    return ("pci.0", 0xA + index) if index < 6 else ("pci.2", 0x1 + index - 6)


class GuestBridge:
    def __init__(self, vmid, qmp_path, sleep=time.sleep):
        self.vmid = vmid
        self.qmp_path = qmp_path
        self.sleep = sleep
        self.lock = threading.Lock()
        self._qmp = None

    @property
    def qmp(self):
        if self._qmp is None:
            self._qmp = QMP(self.qmp_path)
        return self._qmp

    def __call__(self, event, vm, key, volume):
        if vm.vmid != self.vmid:
            return
        with self.lock:
            try:
                if event == "attach":
                    self.plug(vm.config, key, vm.config.get(key, ""), volume)
                elif event == "detach":
                    self.unplug(vm.config, key)
                elif event == "resize":
                    self.resize(key, volume.size)
            except (OSError, ValueError):
                self._qmp = None  # the QMP client closed itself: the next event connects anew
                raise

    # ------------------------------------------------------------------ plug

    def plug(self, config, key, value, volume):
        """vm_deviceplug (src/PVE/QemuServer.pm) for scsiN and virtioN."""
        if volume.path is None:
            raise RuntimeError("guest mode needs --data-dir, so that volumes have backing files")
        if key in self.devices():
            return  # vm_deviceplug: "return 1 if defined($devices_list->{$deviceid})"
        options = dict(part.split("=", 1) for part in value.split(",")[1:] if "=" in part)
        index = int(re.sub(r"^\D+", "", key))
        if key.startswith("scsi"):
            bus = self.find_or_create_scsi_controller(config, index)
            self.drive_add(key, volume.path, options)
            device = f"scsi-hd,bus={bus}.0,channel=0,scsi-id=0,lun={index},drive=drive-{key},id={key}"
            if options.get("ssd") == "1":
                device += ",rotation_rate=1"
            if options.get("wwn"):
                device += f",wwn={options['wwn']}"
            device += self.serial_option(options)
            try:
                self.device_add(device)  # no deviceaddverify for scsiN
            except Exception:
                self.drive_del(key)
                raise
        elif key.startswith("virtio"):
            if options.get("iothread") == "1":
                self.iothread_add(key)
            self.drive_add(key, volume.path, options)
            pci_bus, address = virtio_pci_address(index)
            device = f"virtio-blk-pci,drive=drive-{key},id={key},bus={pci_bus},addr={address:#x}"
            if options.get("iothread") == "1":
                device += f",iothread=iothread-{key}"
            device += self.serial_option(options)
            try:
                self.device_add(device)
                self.device_add_verify(key)
            except Exception:
                self.drive_del(key)
                raise
        else:
            raise RuntimeError(f"guest mode plugs scsiN and virtioN disks, not {key}")

    def find_or_create_scsi_controller(self, config, index):
        """qemu_findorcreatescsihw, with scsihw_infos (src/PVE/QemuServer/DriveDevice.pm):
        virtio-scsi-pci puts every disk on scsihw0, virtio-scsi-single gives each its own."""
        scsihw = config.get("scsihw", "lsi")
        if scsihw == "virtio-scsi-pci":
            controller, device = "scsihw0", "virtio-scsi-pci,id=scsihw0,bus=pci.0,addr=0x5"
        elif scsihw.startswith("virtio-scsi-single"):
            controller = f"virtioscsi{index}"
            device = f"virtio-scsi-pci,id={controller},bus=pci.3,addr={index + 1:#x}"
            if "pci.3" not in self.devices():
                self.device_add("pci-bridge,id=pci.3,chassis_nr=3,bus=pci.0,addr=0x5")
        else:
            raise RuntimeError(f"guest mode models virtio-scsi controllers, not scsihw {scsihw}")
        if controller not in self.devices():
            self.device_add(device)
            self.device_add_verify(controller)
        return controller

    @staticmethod
    def serial_option(options):
        """print_drivedevice_full: the config keeps serial URI-encoded; QEMU gets it
        unescaped with commas doubled (_escape_qemu_arg_value)."""
        serial = options.get("serial")
        if not serial:
            return ""
        return ",serial=" + urllib.parse.unquote(serial).replace(",", ",,")

    def drive_add(self, key, path, options):
        """qemu_driveadd: drive_add auto "<print_drive_commandline_full>" over HMP,
        with its defaults for a raw file: cache=none, aio=io_uring, detect-zeroes."""
        drive = f"file={path},if=none,id=drive-{key}"
        if options.get("discard") == "on":
            drive += ",discard=on"
        if options.get("ro") == "1":
            drive += ",readonly=on"
        drive += ",format=raw,cache=none,aio=io_uring"
        drive += ",detect-zeroes=" + ("unmap" if options.get("discard") == "on" else "on")
        reply = self.qmp.hmp(f'drive_add auto "{drive}"')
        if "OK" not in reply:
            raise RuntimeError(f"adding drive failed: {reply}")

    def device_add(self, device):
        """qemu_deviceadd (src/PVE/QemuServer/QMPHelpers.pm): device_add over HMP."""
        reply = self.qmp.hmp(f"device_add driver={device}")
        if reply.strip():
            raise RuntimeError(f"device_add {device}: {reply.strip()}")

    def device_add_verify(self, device_id):
        """qemu_deviceaddverify: up to 6 looks, 1 s apart."""
        for _ in range(6):
            if device_id in self.devices():
                return
            self.sleep(1)
        raise RuntimeError(f"error on hotplug device '{device_id}'")

    def iothread_add(self, key):
        """qemu_iothread_add: object-add unless query-iothreads lists it."""
        if not any(t.get("id") == f"iothread-{key}" for t in self.qmp.execute("query-iothreads")):
            self.qmp.execute("object-add", **{"qom-type": "iothread", "id": f"iothread-{key}"})

    # ---------------------------------------------------------------- unplug

    def unplug(self, config, key):
        """vm_deviceunplug for scsiN and virtioN."""
        if key not in self.devices():
            return
        self.qmp.hmp(f"device_del {key}")
        self.device_del_verify(key)
        self.drive_del(key)
        if key.startswith("virtio"):
            self.iothread_del(key)
        elif config.get("scsihw", "").startswith("virtio-scsi-single"):
            # qemu_deletescsihw: each disk's own controller goes with it.
            controller = f"virtioscsi{key[len('scsi'):]}"
            self.qmp.hmp(f"device_del {controller}")
            self.device_del_verify(controller, timeout=15)

    def device_del_verify(self, device_id, timeout=5):
        """qemu_devicedelverify: timeout + 1 looks, 1 s apart; the guest must let go."""
        for _ in range(timeout + 1):
            if device_id not in self.devices():
                return
            self.sleep(1)
        raise RuntimeError(f"error on hot-unplugging device '{device_id}' - still busy in guest?")

    def drive_del(self, key):
        """qemu_drivedel: "Device ... not found" is fine (QEMU deleted it with the device)."""
        reply = self.qmp.hmp(f"drive_del drive-{key}")
        if reply.strip() and "not found" not in reply:
            raise RuntimeError(f"deleting drive drive-{key} failed: {reply.strip()}")

    def iothread_del(self, key):
        if any(t.get("id") == f"iothread-{key}" for t in self.qmp.execute("query-iothreads")):
            self.qmp.execute("object-del", id=f"iothread-{key}")

    # ---------------------------------------------------------------- resize

    def resize(self, key, size):
        """Blockdev.pm resize (QemuServer.pm qemu_block_resize before 61efcc55):
        block_resize of the drive, its size rounded up to whole KiB."""
        size += (1024 - size % 1024) % 1024
        self.qmp.execute("block_resize", device=f"drive-{key}", size=size)

    # --------------------------------------------------------------- devices

    def devices(self):
        """vm_devices_list: qdev ids from query-pci (into bridges) and the
        device of each drive in query-block (.../virtioN/virtio-backend -> virtioN)."""
        found = set()

        def walk(devices):
            for device in devices:
                if device.get("qdev_id"):
                    found.add(device["qdev_id"])
                walk(device.get("pci_bridge", {}).get("devices", []))

        for bus in self.qmp.execute("query-pci"):
            walk(bus.get("devices", []))
        for block in self.qmp.execute("query-block"):
            qdev = block.get("qdev", "")
            if qdev:
                parts = qdev.split("/")
                found.add(parts[-2] if qdev.endswith("/virtio-backend") else parts[-1])
        return found
