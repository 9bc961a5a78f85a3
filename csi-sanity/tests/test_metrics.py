"""The Prometheus endpoint (--metrics-address): per-RPC counts and latency
histograms, and Proxmox API requests, latencies and errors."""
import os
import re
import socket
import time
import urllib.error
import urllib.request

import grpc
import pytest

import csi_pb2
import csi_pb2_grpc

pytestmark = pytest.mark.skipif(not os.environ.get("SIM_URL"), reason="needs csi-sanity/run's simulator")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def value(text, name, **labels):
    """The sample `name{labels...}` (labels in any order, others allowed), or 0."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def test_metrics_count_calls_and_proxmox_requests(start_driver):
    port = free_port()
    driver = start_driver("--mode", "controller", "--config", os.environ["CSI_CONFIG"], "--metrics-address", f"127.0.0.1:{port}")
    before = scrape(port)  # start_driver's readiness Probe is in here
    with grpc.insecure_channel(driver.target) as channel:
        identity = csi_pb2_grpc.IdentityStub(channel)
        controller = csi_pb2_grpc.ControllerStub(channel)
        for _ in range(3):
            identity.Probe(csi_pb2.ProbeRequest(), timeout=10)
        with pytest.raises(grpc.RpcError):
            controller.CreateVolume(csi_pb2.CreateVolumeRequest(), timeout=10)
        with pytest.raises(grpc.RpcError):
            controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="sim//ceph/vm-9999-missing"), timeout=30)
    text = scrape(port)
    def grew(name, **labels):
        return value(text, name, **labels) - value(before, name, **labels)
    assert grew("proxmox_csi_rpc_requests_total", method="/csi.v1.Identity/Probe", code="OK") == 3
    assert grew("proxmox_csi_rpc_requests_total", method="/csi.v1.Controller/CreateVolume", code="INVALID_ARGUMENT") == 1
    assert grew("proxmox_csi_rpc_duration_seconds_count", method="/csi.v1.Identity/Probe") == 3
    assert grew("proxmox_csi_rpc_duration_seconds_bucket", method="/csi.v1.Identity/Probe", le="+Inf") == 3
    # The volume lookup asked Proxmox: counted with the path's variable parts named, and timed.
    assert value(text, "proxmox_csi_proxmox_requests_total", cluster="sim", method="GET", path="/cluster/resources", status="200") >= 1
    assert value(text, "proxmox_csi_proxmox_request_duration_seconds_count", cluster="sim", method="GET", path="/cluster/resources") >= 1
    assert value(text, "proxmox_csi_build_info", mode="controller") == 1
    assert "/nodes/pve1/" not in text, "paths are templates, not one label per node"


def test_proxmox_errors_are_counted_by_kind(start_driver, tmp_path):
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(open(os.environ["CSI_CONFIG"]).read().replace("5ba0d1b4", "00000000"))
    # A wrong token: the readiness poll's /version requests fail with 401.
    start_driver("--mode", "controller", "--config", str(config), "--metrics-address", f":{port}", wait=False)
    text = ""
    for _ in range(100):
        text = ""
        try:
            text = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            pass
        if value(text, "proxmox_csi_proxmox_errors_total", cluster="sim", kind="authentication") >= 1:
            break
        time.sleep(0.1)
    assert value(text, "proxmox_csi_proxmox_errors_total", cluster="sim", kind="authentication") >= 1
    assert value(text, "proxmox_csi_proxmox_requests_total", cluster="sim", method="GET", path="/version", status="401") >= 1


def test_a_bad_metrics_address_is_a_usage_error(start_driver):
    driver = start_driver("--mode", "node", "--metrics-address", "no-port-here", wait=False)
    assert driver.process.wait(10) == 2
    assert "--metrics-address" in driver.read_log()
