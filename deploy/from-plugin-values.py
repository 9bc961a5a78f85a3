"""Turns the Helm values of a sergelogvinov/proxmox-csi-plugin release into
values for this chart, so `helm upgrade` of that release keeps every object
Kubernetes will not let change: the CSIDriver (same name and spec) and the
StorageClasses (same name, provisioner, parameters, reclaimPolicy,
volumeBindingMode, mountOptions, allowedTopologies). See
docs/migrating-from-proxmox-csi-plugin.md.

    helm get values RELEASE -n NAMESPACE -o yaml > plugin-values.yaml
    python3 deploy/from-plugin-values.py plugin-values.yaml > values.yaml

What cannot be carried over is said on stderr, and the exit status is 1 when
the result would not work (a config kept in a Secret of its own)."""
import sys

import yaml

DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


def storage_class(plugin_class, problems):
    """The plugin's templates/storageclass.yaml and _storage.tpl at a7c58ec, as this chart's entry:
    extraParameters first, then fstype (ext4), storage, cache and ssd over them (mustMergeOverwrite)."""
    parameters = dict(plugin_class.get("extraParameters") or {})
    parameters["csi.storage.k8s.io/fstype"] = plugin_class.get("fstype") or "ext4"
    parameters["storage"] = plugin_class["storage"]
    if plugin_class.get("cache"):
        parameters["cache"] = plugin_class["cache"]
    if plugin_class.get("ssd"):
        parameters["ssd"] = str(plugin_class["ssd"]).lower() if isinstance(plugin_class["ssd"], bool) else str(plugin_class["ssd"])
    annotations = dict(plugin_class.get("annotations") or {})
    entry = {
        "name": plugin_class["name"],
        "default": annotations.pop(DEFAULT_CLASS, "false") == "true",
        "parameters": {key: str(value) for key, value in parameters.items()},
        "volumeBindingMode": plugin_class.get("volumeBindingMode") or "WaitForFirstConsumer",
        "reclaimPolicy": plugin_class.get("reclaimPolicy") or "Delete",
    }
    for key in ("mountOptions", "allowedTopologies"):
        if plugin_class.get(key):
            entry[key] = plugin_class[key]
    if annotations or plugin_class.get("labels"):
        problems.append(f"StorageClass {plugin_class['name']}: its labels and annotations (other than the default-class one) "
                        "are not rendered by this chart; add them with kubectl after the upgrade")
    # An encrypted class (its node-stage and node-expand secrets) carries over as it is: the
    # node opens the plugin's LUKS2 volumes with the same secret's passphrase.
    if parameters.get("replicate") in ("true", "1"):
        problems.append(f"StorageClass {plugin_class['name']}: replicate is not supported (README \"StorageClass parameters\")")
    return entry


def convert(plugin):
    problems, fatal = [], []
    config = plugin.get("config") or {}
    if plugin.get("existingConfigSecret"):
        fatal.append(f"the config is in the Secret {plugin['existingConfigSecret']}: put its config.yaml "
                     "(kubectl get secret … -o jsonpath='{.data.config\\.yaml}' | base64 -d) under config: and nodeConfig: by hand")
    elif not config.get("clusters"):
        fatal.append("the values name no Proxmox cluster (config.clusters)")
    text = yaml.safe_dump(config, sort_keys=False)
    values = {
        "driverName": plugin.get("provisionerName") or "csi.proxmox.sinextra.dev",
        # The plugin's CSIDriver sets none: Kubernetes' default, immutable before 1.29.
        "fsGroupPolicy": "ReadWriteOnceWithFSType",
        "config": text,
        # The node plugin asks Proxmox which disk holds a volume the plugin staged (its WWN):
        # the same clusters; a token that can only read VMs (VM.Audit) is enough there.
        "nodeConfig": text,
        "storageClasses": [storage_class(c, problems) for c in plugin.get("storageClass") or []],
    }
    return values, problems, fatal


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        values, problems, fatal = convert(yaml.safe_load(f) or {})
    for problem in problems + fatal:
        print(f"from-plugin-values: {problem}", file=sys.stderr)
    yaml.safe_dump(values, sys.stdout, sort_keys=False)
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
