"""A throwaway QEMU guest running the node plugin, for end-to-end tests of the node service.

    from vm import GuestVM                      # with guest/ on sys.path
    with GuestVM(uuid="...", driver_args=["--device-wait=20"], extra_qmp=["sim"]) as vm:
        vm.grpc_target                          # "127.0.0.1:PORT": the node service, plain gRPC
        status, output = vm.sh("ls /sys/block")
        vm.qmp("device_add", driver="scsi-hd", bus="scsihw0.0", ...)
        vm.qmp_socket("sim")                    # another QMP socket, for another client
        vm.write_file("/etc/proxmox-csi/config.yaml", text)

The guest reaches the host's loopback at 10.0.2.2 (QEMU user networking), e.g. a simulated
Proxmox API listening on 127.0.0.1.

The guest looks like a Proxmox VM to the driver: i440fx machine, a virtio-scsi-pci controller
named scsihw0 at the slot Proxmox uses, SMBIOS type 1 uuid and serial. It boots guest/build-image's
kernel and initramfs (built or refreshed on start). Hardware KVM is used when the host has it,
else TCG; GUEST_ACCEL=tcg (or kvm) forces one. GUEST_KEEP=1 keeps each VM's folder (serial.log,
qemu.log) after stop(). Standard library only.
"""

import base64
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "simulator"))
from pvesim.qmp import QMP, QMPError  # noqa: E402,F401  (one QMP client for the bed and the simulator)

CACHE = os.environ.get("GUEST_CACHE", os.path.join(os.path.dirname(HERE), ".guest-cache"))
GRPC_PORT, EXEC_PORT = 10000, 10001  # inside the guest, see guest/init
EXIT_TRAILER = re.compile(rb"\n__EXIT__ (\d+)\n\Z")


class GuestError(RuntimeError):
    pass


def build_image():
    """Runs guest/build-image (a no-op when up to date); returns (kernel, initrd)."""
    subprocess.run([os.path.join(HERE, "build-image")], check=True, stdout=subprocess.DEVNULL)
    return os.path.join(CACHE, "vmlinuz"), os.path.join(CACHE, "initramfs.cpio")


def kvm_usable():
    """Hardware KVM only: under a PVM host (kvm_pvm, no kvm_intel/kvm_amd) /dev/kvm opens, but a
    stock kernel crawls — it was still decompressing itself after five minutes."""
    if not any(os.path.exists(f"/sys/module/{m}") for m in ("kvm_intel", "kvm_amd")):
        return False
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GuestVM:
    def __init__(self, uuid=None, serial="guest-node-serial", driver_args=(), kernel_args=(),
                 extra_qmp=(), memory=768, accel=None, kernel=None, initrd=None):
        self.uuid = uuid or str(uuidlib.uuid4())
        self.serial = serial
        self.driver_args = list(driver_args)  # each without commas or spaces (kernel cmdline)
        self.kernel_args = list(kernel_args)
        self.extra_qmp = list(extra_qmp)  # names of further QMP sockets, see qmp_socket()
        self.memory = memory
        self.accel = accel or os.environ.get("GUEST_ACCEL")  # None: KVM when it works, else TCG
        self.kernel, self.initrd = kernel, initrd
        self.grpc_port, self.exec_port = free_port(), free_port()
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.workdir = None
        self.proc = None
        self.boot_seconds = None
        self._qmp = None

    def qmp_socket(self, name):
        """The path of the extra QMP socket called name (one of extra_qmp), for another client."""
        if name not in self.extra_qmp:
            raise GuestError(f"no QMP socket {name!r}: GuestVM(extra_qmp=...) has {self.extra_qmp}")
        return os.path.join(self.workdir, f"qmp-{name}.sock")

    @property
    def serial_log(self):
        return os.path.join(self.workdir, "serial.log")

    def console(self):
        """Everything the guest printed on ttyS0 so far: init's markers and the driver's log."""
        with open(self.serial_log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def start(self, timeout=300):
        if self.kernel is None or self.initrd is None:
            self.kernel, self.initrd = build_image()
        if self.accel:
            accel = ["-accel", self.accel]
        else:
            accel = ["-accel", "kvm", "-accel", "tcg"] if kvm_usable() else ["-accel", "tcg"]
        self.workdir = tempfile.mkdtemp(prefix="guestvm-")
        append = ["console=ttyS0", "quiet", "panic=1"] + self.kernel_args
        if self.driver_args:
            append.append("csiargs=" + ",".join(self.driver_args))
        # restrict=off lets the guest reach the host's loopback through 10.0.2.2.
        netdev = (f"user,id=net0,restrict=off,"
                  f"hostfwd=tcp:127.0.0.1:{self.grpc_port}-:{GRPC_PORT},"
                  f"hostfwd=tcp:127.0.0.1:{self.exec_port}-:{EXEC_PORT}")
        command = [
            "qemu-system-x86_64", "-machine", "pc", *accel,
            "-m", str(self.memory), "-smp", "1", "-nodefaults", "-no-reboot", "-nographic",
            "-serial", f"file:{self.serial_log}",
            "-kernel", self.kernel, "-initrd", self.initrd, "-append", " ".join(append),
            # qemu-server config_to_command on i440fx: bridges pci.1 and pci.2 (virtio6..15 sit on pci.2),
            # and scsihw=virtio-scsi-pci as one controller at pci.0 0x5 (src/PVE/QemuServer/PCI.pm).
            "-device", "pci-bridge,id=pci.1,chassis_nr=1,bus=pci.0,addr=0x1e",
            "-device", "pci-bridge,id=pci.2,chassis_nr=2,bus=pci.0,addr=0x1f",
            "-device", "virtio-scsi-pci,id=scsihw0,bus=pci.0,addr=0x5",
            "-smbios", f"type=1,uuid={self.uuid},serial={self.serial}",
            # romfile= skips iPXE: the kernel is booted directly.
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,bus=pci.0,addr=0x12,romfile=",
            "-qmp", f"unix:{os.path.join(self.workdir, 'qmp.sock')},server=on,wait=off",
        ]
        for name in self.extra_qmp:
            command += ["-chardev", f"socket,id=qmp-{name},path={self.qmp_socket(name)},server=on,wait=off",
                        "-mon", f"chardev=qmp-{name},mode=control"]
        started = time.monotonic()
        with open(os.path.join(self.workdir, "qemu.log"), "wb") as qemu_log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=qemu_log,
                                         stderr=subprocess.STDOUT)
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        self.accel = "kvm" if self.qmp("query-kvm")["enabled"] else "tcg"
        return self

    def _wait_ready(self, deadline):
        while True:
            console = self.console() if os.path.exists(self.serial_log) else ""
            if "GUEST-READY" in console:
                return
            problem = None
            if "GUEST-FAILED" in console or "GUEST-DRIVER-EXITED" in console:
                problem = "the guest reported a failure"
            elif self.proc.poll() is not None:
                problem = f"qemu exited with status {self.proc.returncode}"
            elif time.monotonic() > deadline:
                problem = "timed out waiting for GUEST-READY"
            if problem:
                with open(os.path.join(self.workdir, "qemu.log"), "rb") as f:
                    qemu = f.read().decode("utf-8", "replace")[-2000:]
                tail = "\n".join(console.splitlines()[-40:])
                raise GuestError(f"{problem} (in {self.workdir})\n--- qemu:\n{qemu}\n--- serial:\n{tail}")
            time.sleep(0.2)

    def qmp(self, command, **arguments):
        """Runs one QMP command; returns its 'return' value or raises QMPError."""
        if self._qmp is None:
            self._qmp = QMP(os.path.join(self.workdir, "qmp.sock"), timeout=30)
        return self._qmp.execute(command, **arguments)

    def wait_event(self, name, timeout=30):
        """Returns (and forgets) the first QMP event called name, waiting for it if need be."""
        self.qmp("query-status")  # connects
        return self._qmp.wait_event(name, timeout)

    def sh(self, command, timeout=60):
        """Runs a shell command in the guest as root; returns (status, stdout+stderr). The guest
        kills it after timeout seconds (status 137). A command left running in the background must
        redirect its output, or the reply waits for it."""
        request = f"{int(timeout)} {base64.b64encode(command.encode()).decode()}\n"
        with socket.create_connection(("127.0.0.1", self.exec_port), timeout=timeout + 10) as s:
            s.sendall(request.encode())
            reply = bytearray()
            while chunk := s.recv(65536):
                reply += chunk
        match = EXIT_TRAILER.search(reply)
        if not match:
            raise GuestError(f"no exit status from the guest for {command!r}: {bytes(reply[-500:])!r}")
        return int(match.group(1)), reply[:match.start()].decode("utf-8", "replace")

    def sh_ok(self, command, timeout=60):
        """Like sh(), but raises unless the command exits 0; returns its output."""
        status, output = self.sh(command, timeout)
        if status != 0:
            raise GuestError(f"{command!r} exited {status}:\n{output}")
        return output

    def write_file(self, path, data, mode="0644"):
        """Writes data (str or bytes) to path in the guest, making its folder."""
        if isinstance(data, str):
            data = data.encode()
        encoded = base64.b64encode(data).decode()
        self.sh_ok(f"mkdir -p $(dirname {shlex.quote(path)}) && echo {encoded} | base64 -d > {shlex.quote(path)} "
                   f"&& chmod {mode} {shlex.quote(path)}")

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            try:
                self.qmp("quit")
            except (OSError, GuestError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self.workdir and not os.environ.get("GUEST_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
