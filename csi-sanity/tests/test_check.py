"""`proxmox-csi check` against the simulator over HTTPS: what it prints when
everything is right, and how precisely it explains each thing that is wrong."""
import subprocess

import pytest

from conftest import DRIVER_BIN, Simulator, make_ca

TOKEN = ("csi@pve!csi", "5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21")
AUDIT = ("audit@pve!ro", "0c3c4f4e-1f7b-4a53-8a3e-5b9a2e1d7c40")


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    sim = Simulator(tmp_path_factory.mktemp("pki"))
    yield sim.info
    sim.stop()


def check(sim, tmp_path, url=None, token=TOKEN, ca=None):
    config = tmp_path / "config.yaml"
    config.write_text(f"""
clusters:
  - name: sim
    url: {url or sim['url']}
    tokenID: "{token[0]}"
    tokenSecret: "{token[1]}"
    caFile: {ca or sim['ca']}
""")
    result = subprocess.run([DRIVER_BIN, "check", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert token[1] not in result.stdout + result.stderr, "a secret reached the output"
    return result


def test_healthy_cluster_reports_version_storages_and_privileges(simulator, tmp_path):
    result = check(simulator, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Proxmox VE 9.1.1" in result.stdout
    assert "local-lvm" in result.stdout and "GiB free of" in result.stdout
    assert "driver volumes (owner vmid 9999)" in result.stdout
    assert "privileges: everything the driver needs" in result.stdout


def test_wrong_url_says_nothing_answers(simulator, tmp_path):
    result = check(simulator, tmp_path, url="https://127.0.0.1:1")
    assert result.returncode == 1
    assert "nothing answers at https://127.0.0.1:1" in result.stdout


def test_wrong_token_says_which_token_was_refused(simulator, tmp_path):
    result = check(simulator, tmp_path, token=(TOKEN[0], "not-the-secret"))
    assert result.returncode == 1
    assert "Proxmox refused the API token csi@pve!csi" in result.stdout


def test_wrong_ca_says_the_certificate_is_not_trusted_by_that_file(simulator, tmp_path):
    other = make_ca(simulator["dir"], "other-ca")
    result = check(simulator, tmp_path, ca=other)
    assert result.returncode == 1
    assert f"not trusted by the CA in {other}" in result.stdout


def test_missing_privileges_are_listed(simulator, tmp_path):
    result = check(simulator, tmp_path, token=AUDIT)
    assert result.returncode == 1
    assert "missing privileges:" in result.stdout
    assert "Datastore.AllocateSpace on /storage (to allocate volumes)" in result.stdout
    assert "VM.Config.Disk on /vms (to attach and detach disks)" in result.stdout
