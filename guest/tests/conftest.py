"""The guest test bed: one QEMU guest (a Debian kernel, the node service
inside), the Proxmox simulator in guest mode plugging disks into it with
qemu-server's QMP commands, and the controller on the host. One chain:
controller -> Proxmox API -> QEMU -> guest kernel -> node service.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

GUEST = Path(__file__).resolve().parents[1]
ROOT = GUEST.parent
sys.path[:0] = [str(GUEST), str(ROOT / "simulator"), str(ROOT / "csi-sanity" / "_gen")]

import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402
from pvesim.cluster import _uuid_for  # noqa: E402
from pvesim.guestmode import GuestBridge  # noqa: E402
from vm import GuestVM  # noqa: E402

DRIVER_BIN = os.environ.get("DRIVER_BIN", str(ROOT / ".build" / "debug" / "proxmox-csi"))
VMID, VM_NAME = 100, "k8s-node-1"
TOKEN = ("csi@pve!csi", "5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21")  # the default scenario's
# The node is not named like its VM: NodeGetInfo must find the VM by the SMBIOS uuid QEMU shows.
GUEST_NODE_NAME = "guest-node"
SCSIHW = {"scsihw": "virtio-scsi-pci"}  # the VM config the direct plugs follow


def config_yaml(url):
    return (f"clusters:\n  - name: sim\n    url: {url}\n"
            f"    tokenID: {TOKEN[0]}\n    tokenSecret: {TOKEN[1]}\n")


class Simulator:
    def __init__(self, workdir, qmp_path):
        port_file = workdir / "sim.port"
        self.log = open(workdir / "simulator.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pvesim", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
             "--data-dir", str(workdir / "data"), "--auth-failure-delay", "0.1",
             "--guest-vm", str(VMID), "--guest-qmp", qmp_path, "--exit-on-stdin-eof"],
            cwd=ROOT / "simulator", stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT)
        (workdir / "data").mkdir(exist_ok=True)
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def __call__(self, method, path, **params):
        data = urllib.parse.urlencode(params).encode() if params else None
        with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data, method=method)) as response:
            return json.loads(response.read())["data"]

    def vm_config(self):
        return self("GET", "/_sim/state")["vms"][str(VMID)]["config"]

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


class Bed:
    """What every spec uses: the guest, its node service, the controller, the simulator."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.vm = GuestVM(uuid=_uuid_for(VMID), serial="pvesim-100", extra_qmp=["bridge", "bridge-tests"])
        self.vm.start()
        self.sim = Simulator(workdir, self.vm.qmp_socket("bridge"))
        # Disks a spec plugs itself, past the controller, go through the tests' own QMP socket.
        self.direct = GuestBridge(VMID, self.vm.qmp_socket("bridge-tests"))
        # The VM's own disk, scsi0 at LUN 0, as every such VM has: a host holding a LUN 0 is
        # what made a wildcard SCSI scan take seconds (6 s under TCG, ~10 s seen in a guest).
        self.plug("scsi0")
        # Proxmox's scsihw for these VMs: one virtio-scsi controller, every disk a LUN on it.
        self.sim("PUT", "/_sim/vm-config", vmid=VMID, key="scsihw", value="virtio-scsi-pci")
        # The guest reaches the host's loopback at QEMU's gateway address.
        self.restart_node(f"--config=/etc/proxmox-csi/config.yaml", "--device-wait=20",
                          config=config_yaml(f"http://10.0.2.2:{self.sim.port}"))
        (workdir / "config.yaml").write_text(config_yaml(self.sim.url))
        socket = workdir / "controller.sock"
        self.controller_log = open(workdir / "controller.log", "w")
        self.controller_process = subprocess.Popen(
            [DRIVER_BIN, "--mode", "controller", "--endpoint", f"unix://{socket}", "--config", str(workdir / "config.yaml")],
            stdout=self.controller_log, stderr=subprocess.STDOUT)
        self.controller_channel = grpc.insecure_channel(f"unix://{socket}")
        self.controller = csi_pb2_grpc.ControllerStub(self.controller_channel)
        wait_for_probe(self.controller_channel, "the controller")

    def plug(self, key, serial=None, wwn=None, size_mib=64):
        """A disk of its own (a file here) plugged with qemu-server's commands, past the controller."""
        path = self.workdir / f"direct-{key}-{os.urandom(3).hex()}.raw"
        with open(path, "wb") as f:
            f.truncate(size_mib << 20)
        options = "".join(f",{k}={v}" for k, v in (("serial", serial), ("wwn", wwn)) if v)
        self.direct.plug(SCSIHW, key, f"direct:{path.name}{options}", type("Volume", (), {"path": str(path)}))

    def unplug(self, key):
        self.direct.unplug(SCSIHW, key)

    def mounted_source(self, path):
        """What the guest's own mount table has mounted at `path`, or None."""
        for line in self.vm.sh_ok("cat /proc/self/mountinfo").splitlines():
            fields = line.split()
            if fields[4] == path:
                return fields[fields.index("-") + 2]
        return None

    def restart_node(self, *flags, config=None):
        """Runs the guest's node service again with `flags` (and a config file)."""
        if config is not None:
            self.vm.write_file("/etc/proxmox-csi/config.yaml", config)
        self.vm.sh_ok("killall proxmox-csi 2>/dev/null; for i in $(seq 50); do pidof proxmox-csi || break; sleep 0.1; done; "
                      f"run-driver {' '.join(flags)} & sleep 0.2", timeout=30)
        self.node_channel = grpc.insecure_channel(self.vm.grpc_target)
        self.node = csi_pb2_grpc.NodeStub(self.node_channel)
        self.identity = csi_pb2_grpc.IdentityStub(self.node_channel)
        wait_for_probe(self.node_channel, "the guest's node service", lambda: self.vm.console()[-3000:])

    def stop(self):
        self.controller_channel.close()
        self.controller_process.terminate()
        self.controller_process.wait(10)
        self.controller_log.close()
        self.vm.stop()
        self.sim.stop()


def wait_for_probe(channel, what, log=lambda: "", timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=2)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer a Probe within {timeout} s\n{log()}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def bed():
    workdir = Path(tempfile.mkdtemp(prefix="guest-bed-"))
    bed = Bed(workdir)
    yield bed
    bed.stop()
