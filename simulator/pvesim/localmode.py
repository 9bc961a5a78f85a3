"""Local mode: the simulated VM that stands for this host gets real disks.

When a disk is hot-plugged into that VM, its volume's backing file is
attached to a loop device, and a sysfs-like tree describes it the way the
guest kernel would (see shared GUEST-DEVICES.md):

  virtio-blk (virtioN):  ROOT/block/loopK/serial         the disk's serial
  virtio-scsi (scsiN):   ROOT/block/loopK/device/vpd_pg80  00 80 00 LEN + serial
                         ROOT/block/loopK/device/wwid      naa.<wwn> (when a wwn is set)
                         ROOT/block/loopK/device/vendor, model
  both:                  ROOT/block/loopK/size  (512-byte sectors), ROOT/block/loopK/dev
  the VM itself:         ROOT/class/dmi/id/product_uuid, product_serial  (from its smbios1)

The node service, pointed at ROOT instead of /sys, finds the disk by its
serial and opens /dev/loopK. Detaching removes the loop device and the entry;
resizing grows the loop device. Needs root and the losetup command.
"""
import base64
import os
import shutil
import subprocess
import threading
import urllib.parse


class LocalHost:
    def __init__(self, vmid, sysfs_root, smbios1=""):
        self.vmid = vmid
        self.root = sysfs_root
        self.attached = {}  # config key -> loop device path
        self.lock = threading.Lock()
        os.makedirs(os.path.join(self.root, "block"), exist_ok=True)
        self.describe_smbios(smbios1)

    def describe_smbios(self, smbios1):
        """What QEMU's -smbios type=1 shows the guest, as Proxmox builds it from smbios1."""
        fields = dict(part.split("=", 1) for part in smbios1.split(",") if "=" in part)
        dmi = os.path.join(self.root, "class", "dmi", "id")
        os.makedirs(dmi, exist_ok=True)
        serial = fields.get("serial", "")
        if fields.get("base64") == "1":
            serial = base64.b64decode(serial).decode(errors="replace")
        self.write(dmi, "product_uuid", fields.get("uuid", "").lower())
        self.write(dmi, "product_serial", serial)

    def __call__(self, event, vm, key, volume):
        if vm.vmid != self.vmid:
            return
        with self.lock:
            if event == "attach":
                self.attach(key, volume, vm.config.get(key, ""))
            elif event == "detach":
                self.detach(key)
            elif event == "resize":
                self.resize(key, volume)

    def attach(self, key, volume, value):
        if volume.path is None:
            raise RuntimeError("local mode needs --data-dir, so that volumes have backing files")
        if key in self.attached:
            self.detach(key)
        device = subprocess.run(["losetup", "--find", "--show", volume.path], check=True,
                                capture_output=True, text=True).stdout.strip()
        self.attached[key] = device
        options = dict(part.split("=", 1) for part in value.split(",")[1:] if "=" in part)
        serial = urllib.parse.unquote(options.get("serial", ""))
        entry = self.entry(device)
        os.makedirs(entry, exist_ok=True)
        self.write(entry, "size", str(volume.size // 512))
        self.write(entry, "dev", open(f"/sys/block/{os.path.basename(device)}/dev").read().strip())
        if key.startswith("virtio"):
            self.write(entry, "serial", serial)
        else:
            scsi = os.path.join(entry, "device")
            os.makedirs(scsi, exist_ok=True)
            self.write(scsi, "vendor", "QEMU    ")
            self.write(scsi, "model", "QEMU HARDDISK   ")
            data = serial.encode()
            with open(os.path.join(scsi, "vpd_pg80"), "wb") as f:
                f.write(bytes([0x00, 0x80, 0x00, len(data)]) + data)
            if "wwn" in options:
                self.write(scsi, "wwid", "naa." + options["wwn"][2:].lower())

    def detach(self, key):
        device = self.attached.pop(key, None)
        if device is None:
            return
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        shutil.rmtree(self.entry(device), ignore_errors=True)

    def resize(self, key, volume):
        device = self.attached.get(key)
        if device:
            subprocess.run(["losetup", "-c", device], check=True, capture_output=True)
            self.write(self.entry(device), "size", str(volume.size // 512))

    def close(self):
        with self.lock:
            for key in list(self.attached):
                self.detach(key)

    def entry(self, device):
        return os.path.join(self.root, "block", os.path.basename(device))

    @staticmethod
    def write(directory, name, text):
        with open(os.path.join(directory, name), "w") as f:
            f.write(text + ("\n" if name not in ("vendor", "model") else ""))
