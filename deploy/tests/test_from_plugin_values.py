"""`helm upgrade` of a proxmox-csi-plugin release to this chart
(docs/migrating-from-proxmox-csi-plugin.md): the values deploy/from-plugin-values.py
makes render the objects Kubernetes will not let change exactly as the
plugin's chart (at a7c58ec) rendered them, and the driver reads the config."""
import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(DEPLOY))
import render  # noqa: E402

spec = importlib.util.spec_from_file_location("from_plugin_values", DEPLOY / "from-plugin-values.py")
from_plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(from_plugin)

# A cluster as the plugin's values.yaml documents one (config.clusters[]), with its keys.
PLUGIN_CONFIG = {"features": {"provider": "default"},
                 "clusters": [{"url": "https://cluster-api-1.exmple.com:8006/api2/json", "insecure": False,
                               "token_id": "kubernetes-csi@pve!csi", "token_secret": "secret", "region": "Region-1"}]}

# The plugin's values.yaml example class (commented there), with every key its template reads.
DOCUMENTED_CLASS = {
    "name": "proxmox-data-xfs", "storage": "data", "volumeBindingMode": "Immediate", "reclaimPolicy": "Retain",
    "fstype": "xfs", "cache": "writethrough", "ssd": True,
    "extraParameters": {"diskIOPS": "400", "blockSize": "4096"},
    "mountOptions": ["discard"],
    "allowedTopologies": [{"matchLabelExpressions": [
        {"key": "topology.kubernetes.io/region", "values": ["Region-1"]},
        {"key": "topology.kubernetes.io/zone", "values": ["pve-1", "pve-3"]}]}],
}

# What the plugin's templates/storageclass.yaml renders for each (the fields Kubernetes keeps immutable).
PLUGIN_RENDERED = {
    "proxmox-data-xfs": {"provisioner": "csi.proxmox.sinextra.dev", "reclaimPolicy": "Delete",
                         "volumeBindingMode": "WaitForFirstConsumer",
                         "parameters": {"csi.storage.k8s.io/fstype": "xfs", "storage": "data"}},
    "proxmox-data": {"provisioner": "csi.proxmox.sinextra.dev", "reclaimPolicy": "Delete",
                     "volumeBindingMode": "WaitForFirstConsumer",
                     "parameters": {"csi.storage.k8s.io/fstype": "ext4", "storage": "data", "ssd": "true"}},
}
DOCUMENTED_RENDERED = {
    "provisioner": "csi.proxmox.sinextra.dev", "reclaimPolicy": "Retain", "volumeBindingMode": "Immediate",
    "parameters": {"diskIOPS": "400", "blockSize": "4096", "csi.storage.k8s.io/fstype": "xfs", "storage": "data",
                   "cache": "writethrough", "ssd": "true"},
    "mountOptions": ["discard"], "allowedTopologies": DOCUMENTED_CLASS["allowedTopologies"],
}
# The plugin's templates/csidriver.yaml.
PLUGIN_CSIDRIVER = {"attachRequired": True, "podInfoOnMount": True, "storageCapacity": True, "volumeLifecycleModes": ["Persistent"]}
IMMUTABLE = ("provisioner", "reclaimPolicy", "volumeBindingMode", "parameters", "mountOptions", "allowedTopologies")


def plugin_values(classes):
    values = yaml.safe_load((DEPLOY / "tests" / "plugin" / "ci-values.yaml").read_text())
    values["config"] = copy.deepcopy(PLUGIN_CONFIG)
    values["storageClass"] = classes
    return values


def rendered_objects(values):
    chart = yaml.safe_load((render.CHART / "values.yaml").read_text())
    chart.update(values)
    found = {}
    for text in render.render(namespace="csi-proxmox", values=chart).values():
        for document in yaml.safe_load_all(text):
            if document:
                found[(document["kind"], document["metadata"]["name"])] = document
    return found


def test_the_plugins_ci_classes_and_csidriver_render_unchanged():
    plugin = plugin_values(yaml.safe_load((DEPLOY / "tests" / "plugin" / "ci-values.yaml").read_text())["storageClass"])
    values, problems, fatal = from_plugin.convert(plugin)
    assert problems == [] and fatal == []
    found = rendered_objects(values)
    for name, expected in PLUGIN_RENDERED.items():
        ours = found[("StorageClass", name)]
        assert {k: ours.get(k) for k in IMMUTABLE if k in ours or k in expected} == expected, name
    driver = found[("CSIDriver", "csi.proxmox.sinextra.dev")]["spec"]
    # The plugin's CSIDriver leaves fsGroupPolicy to Kubernetes, which stores ReadWriteOnceWithFSType.
    assert driver == {**PLUGIN_CSIDRIVER, "fsGroupPolicy": "ReadWriteOnceWithFSType"}


def test_every_key_of_a_documented_class_is_carried_over():
    values, problems, fatal = from_plugin.convert(plugin_values([DOCUMENTED_CLASS]))
    assert fatal == []
    ours = rendered_objects(values)[("StorageClass", "proxmox-data-xfs")]
    assert {k: ours[k] for k in IMMUTABLE} == DOCUMENTED_RENDERED


def test_an_encrypted_class_is_carried_over_with_its_secrets():
    secrets = {f"csi.storage.k8s.io/{rpc}-secret-{part}": value for rpc in ("node-stage", "node-expand")
               for part, value in (("name", "proxmox-csi-secret"), ("namespace", "kube-system"))}
    values, problems, fatal = from_plugin.convert(plugin_values([{"name": "c", "storage": "data", "extraParameters": secrets}]))
    assert fatal == [] and problems == []
    parameters = rendered_objects(values)[("StorageClass", "c")]["parameters"]
    assert {k: parameters[k] for k in secrets} == secrets


@pytest.mark.parametrize("extra, words", [
    ({"extraParameters": {"replicate": "true"}}, "replicate is not supported"),
    ({"labels": {"team": "a"}}, "labels and annotations"),
])
def test_what_cannot_be_carried_over_is_said(extra, words):
    _, problems, fatal = from_plugin.convert(plugin_values([{"name": "c", "storage": "data", **extra}]))
    assert fatal == [] and any(words in p for p in problems), problems


def test_a_config_in_a_secret_of_its_own_stops_the_conversion():
    plugin = plugin_values([])
    plugin["existingConfigSecret"] = "proxmox-csi-config"
    script = subprocess.run([sys.executable, str(DEPLOY / "from-plugin-values.py"), "/dev/stdin"],
                            input=yaml.safe_dump(plugin), capture_output=True, text=True)
    assert script.returncode == 1 and "proxmox-csi-config" in script.stderr


@pytest.mark.skipif(not os.environ.get("DRIVER_BIN"), reason="needs the built driver (DRIVER_BIN)")
def test_the_driver_reads_the_config_the_values_carry(tmp_path):
    values, _, _ = from_plugin.convert(plugin_values([]))
    secret = rendered_objects(values)[("Secret", "proxmox-csi-config")]
    (tmp_path / "config.yaml").write_text(secret["stringData"]["config.yaml"])
    # `check` loads the config (exit 2 when it cannot), then asks each cluster (which is not there: exit 1).
    check = subprocess.run([os.environ["DRIVER_BIN"], "check", "--config", str(tmp_path / "config.yaml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 2, check.stderr
    assert "cluster Region-1 (https://cluster-api-1.exmple.com:8006/api2/json)" in check.stdout, check.stdout
