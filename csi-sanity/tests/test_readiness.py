"""The controller's Probe follows its dependency: ready only while the
Proxmox API answers."""
import time

import grpc

import csi_pb2
import csi_pb2_grpc
from conftest import Simulator


def ready(driver):
    with grpc.insecure_channel(driver.endpoint) as channel:
        return csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value


def eventually(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def config_for(tmp_path, url, ca):
    path = tmp_path / "config.yaml"
    path.write_text(f"""
clusters:
  - name: sim
    url: {url}
    tokenID: csi@pve!csi
    tokenSecret: 5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21
    caFile: {ca}
driver:
  probeInterval: 0.2
""")
    return str(path)


def test_controller_is_ready_while_proxmox_answers_and_not_after(start_driver, tmp_path):
    sim = Simulator(tmp_path)
    driver = start_driver("--mode", "controller", "--config", config_for(tmp_path, sim.info["url"], sim.info["ca"]))
    try:
        assert eventually(lambda: ready(driver))
        sim.stop()
        assert eventually(lambda: not ready(driver))
    finally:
        sim.stop()


def test_controller_that_cannot_reach_proxmox_is_not_ready(start_driver, tmp_path):
    ca = tmp_path / "unused-ca.pem"
    ca.write_text("")
    driver = start_driver("--mode", "controller", "--config", config_for(tmp_path, "https://127.0.0.1:1", ca))
    time.sleep(0.5)
    assert ready(driver) is False


def test_node_is_always_ready(start_driver, tmp_path):
    ca = tmp_path / "unused-ca.pem"
    ca.write_text("")
    driver = start_driver("--mode", "node", "--config", config_for(tmp_path, "https://127.0.0.1:1", ca))
    assert ready(driver) is True
