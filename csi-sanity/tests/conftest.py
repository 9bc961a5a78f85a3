"""Fixtures for the conformance suite.

The runner (csi-sanity/run) starts one driver and passes its socket in
CSI_ENDPOINT; tests that need a driver of their own (other flags, signals)
start it with `start_driver`. DRIVER_BIN names the driver executable.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "_gen"))

import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402

ROOT = HERE.parents[1]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN={name}", cwd=directory)
    return directory / f"{name}.pem"


class Simulator:
    """The Proxmox simulator over HTTPS with a CA made for it; exits with its stdin."""

    def __init__(self, directory):
        ca = make_ca(directory, "ca")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=directory)
        (directory / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.pem", "-days", "2", "-extfile", "ext", cwd=directory)
        port_file = directory / "port"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pvesim", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
             "--tls-cert", str(directory / "server.pem"), "--tls-key", str(directory / "server.key"),
             "--auth-failure-delay", "0.1", "--exit-on-stdin-eof"],
            cwd=ROOT / "simulator", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.025)
        self.info = {"url": f"https://127.0.0.1:{port_file.read_text()}", "ca": ca, "dir": directory}

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


DRIVER_BIN = os.environ.get("DRIVER_BIN", str(HERE.parents[1] / ".build" / "debug" / "proxmox-csi"))


class Driver:
    """A driver process serving on a unix socket in its own directory."""

    def __init__(self, *args, endpoint=None):
        self.dir = tempfile.mkdtemp(prefix="csi-conformance-")
        self.socket = os.path.join(self.dir, "csi.sock")
        self.endpoint = endpoint or f"unix://{self.socket}"
        self.log_path = os.path.join(self.dir, "driver.log")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [DRIVER_BIN, "--endpoint", self.endpoint, *args], stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout=10.0):
        """Waits until the endpoint answers a Probe."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"driver exited with {self.process.returncode}: {self.read_log()}")
            try:
                with grpc.insecure_channel(self.target) as channel:
                    csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=1)
                return self
            except grpc.RpcError:
                time.sleep(0.05)
        raise TimeoutError(f"driver did not answer within {timeout}s: {self.read_log()}")

    @property
    def target(self):
        return self.endpoint.replace("tcp://", "") if self.endpoint.startswith("tcp://") else self.endpoint

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        return Path(self.log_path).read_text()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@pytest.fixture
def start_driver():
    started = []

    def start(*args, endpoint=None, wait=True):
        driver = Driver(*args, endpoint=endpoint)
        started.append(driver)
        return driver.wait_ready() if wait else driver

    yield start
    for driver in started:
        driver.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def endpoint():
    """The runner's driver, or one started for this session."""
    given = os.environ.get("CSI_ENDPOINT")
    if given:
        yield given
        return
    driver = Driver("--mode", "all").wait_ready()
    yield driver.endpoint
    driver.stop()


@pytest.fixture
def channel(endpoint):
    with grpc.insecure_channel(endpoint) as channel:
        yield channel


@pytest.fixture
def identity(channel):
    return csi_pb2_grpc.IdentityStub(channel)


def socket_path(endpoint):
    return endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint
