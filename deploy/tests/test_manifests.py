"""The Kubernetes manifests and the Helm chart: every file parses, the
kustomize folder is what the chart renders, and the names, socket paths,
args and mounts agree across the objects (for the default values and for
changed ones)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(DEPLOY))
import render  # noqa: E402

KUSTOMIZE = DEPLOY / "kubernetes"


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d]


def objects(rendered):
    """{(kind, name): object} of a {file: text} rendering."""
    found = {}
    for text in rendered.values():
        for document in documents(text):
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = document
    return found


def container(pod_owner, name):
    return next(c for c in pod_owner["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def flag(container_spec, name):
    values = [a.split("=", 1)[1] for a in container_spec.get("args", []) if a.startswith(f"--{name}=")]
    return values[0] if values else None


def mount(pod_owner, container_spec, path):
    """The volume mounted at `path` in a container, with the mount's settings."""
    entry = next((m for m in container_spec.get("volumeMounts", []) if m["mountPath"] == path), None)
    if entry is None:
        return None, None
    volume = next(v for v in pod_owner["spec"]["template"]["spec"]["volumes"] if v["name"] == entry["name"])
    return volume, entry


def test_every_file_parses_and_names_its_objects():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if "templates" in path.parts or "tests" in path.parts:  # tests/: fixtures, values of other charts
            continue
        for document in documents(path.read_text()):
            if path.name in ("Chart.yaml", "values.yaml", "kustomization.yaml"):
                continue
            assert document.get("apiVersion") and document.get("kind"), path
            assert document.get("metadata", {}).get("name"), path


def test_the_kustomize_folder_is_what_the_chart_renders():
    rendered = render.render()
    for name, text in rendered.items():
        committed = (KUSTOMIZE / name).read_text()
        assert committed == render.HEADER.format(name=name) + text, f"{name} drifted from the chart: run scripts/render-manifests"
    listed = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())["resources"]
    on_disk = {p.name for p in KUSTOMIZE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk, "kustomization.yaml lists exactly the folder's files"


def check_consistency(found, values):
    driver = values["driverName"]
    kubelet = values["kubeletDir"]
    csi_driver = found[("CSIDriver", driver)]["spec"]
    assert csi_driver["attachRequired"] and csi_driver["podInfoOnMount"] and csi_driver["storageCapacity"]

    controller = found[("Deployment", "proxmox-csi-controller")]
    node = found[("DaemonSet", "proxmox-csi-node")]
    for owner, mode in ((controller, "controller"), (node, "node")):
        plugin = container(owner, "proxmox-csi")
        assert flag(plugin, "mode") == mode and flag(plugin, "driver-name") == driver
        assert flag(plugin, "endpoint") == "unix:///csi/csi.sock"
        socket_volume, _ = mount(owner, plugin, "/csi")
        # Every sidecar reaches the driver's socket through the same volume.
        for sidecar in owner["spec"]["template"]["spec"]["containers"]:
            if sidecar["name"] == "proxmox-csi":
                continue
            assert flag(sidecar, "csi-address") == "/csi/csi.sock", sidecar["name"]
            assert mount(owner, sidecar, "/csi")[0] == socket_volume, sidecar["name"]
        if flag(plugin, "config"):
            config_volume, _ = mount(owner, plugin, "/etc/proxmox-csi")
            assert ("Secret", config_volume["secret"]["secretName"]) in found

    # The node plugin may read its own Node (the max-volume-attachments label) and nothing more.
    node_account = node["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = [b for (kind, _), b in found.items() if kind == "ClusterRoleBinding"
                and {"kind": "ServiceAccount", "name": node_account, "namespace": node["metadata"]["namespace"]} in b["subjects"]]
    rules = [rule for b in bindings for rule in found[("ClusterRole", b["roleRef"]["name"])]["rules"]]
    assert rules == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}], rules

    for name in ("csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter"):
        assert "--leader-election" in container(controller, name)["args"], name
    provisioner = container(controller, "csi-provisioner")
    assert "--feature-gates=Topology=true" in provisioner["args"] and "--enable-capacity" in provisioner["args"]
    assert {e["name"] for e in provisioner["env"]} >= {"NAMESPACE", "POD_NAME"}, "capacity tracking needs both"
    assert controller["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    plugin = container(node, "proxmox-csi")
    assert plugin["securityContext"]["privileged"] is True
    assert flag(plugin, "kubelet-dir") == kubelet and flag(plugin, "node-id") == "$(NODE_NAME)"
    kubelet_volume, kubelet_mount = mount(node, plugin, kubelet)
    assert kubelet_volume["hostPath"]["path"] == kubelet and kubelet_mount["mountPropagation"] == "Bidirectional"
    assert mount(node, plugin, "/dev")[0]["hostPath"]["path"] == "/dev"
    assert mount(node, plugin, "/sys")[0]["hostPath"]["path"] == "/sys"
    plugin_dir = mount(node, plugin, "/csi")[0]["hostPath"]["path"]
    assert plugin_dir == f"{kubelet}/plugins/{driver}"
    registrar = container(node, "node-driver-registrar")
    assert flag(registrar, "kubelet-registration-path") == plugin_dir + "/csi.sock"
    assert mount(node, registrar, "/registration")[0]["hostPath"]["path"] == f"{kubelet}/plugins_registry"

    service_account = controller["spec"]["template"]["spec"]["serviceAccountName"]
    for role in ("provisioner", "attacher", "resizer", "snapshotter"):
        binding = found[("ClusterRoleBinding", f"proxmox-csi-{role}")]
        assert binding["roleRef"]["name"] in {name for kind, name in found if kind == "ClusterRole"}
        assert binding["subjects"][0]["name"] == service_account
    assert found[("RoleBinding", "proxmox-csi-controller")]["subjects"][0]["name"] == service_account
    leases = found[("Role", "proxmox-csi-controller")]["rules"]
    assert any("leases" in r["resources"] for r in leases) and any("csistoragecapacities" in r["resources"] for r in leases)

    classes = {name: obj for (kind, name), obj in found.items() if kind == "StorageClass"}
    assert set(classes) == {c["name"] for c in values["storageClasses"]}
    for storage_class in classes.values():
        assert storage_class["provisioner"] == driver and storage_class["allowVolumeExpansion"] is True
        assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
        assert "storage" in storage_class["parameters"] or "profile" in storage_class["parameters"]
    if values["volumeSnapshotClass"]["create"]:
        assert found[("VolumeSnapshotClass", values["volumeSnapshotClass"]["name"])]["driver"] == driver


def test_default_values_agree_across_every_object():
    values = yaml.safe_load((render.CHART / "values.yaml").read_text())
    found = objects(render.render())
    check_consistency(found, values)
    assert {"proxmox-data-xfs", "proxmox-data-xfs-ssd", "proxmox-zfs"} <= {n for k, n in found if k == "StorageClass"}


def test_changed_values_reach_every_object():
    values = yaml.safe_load((render.CHART / "values.yaml").read_text())
    values.update(driverName="csi.proxmox.sinextra.dev", kubeletDir="/var/data/kubelet", nodeConfig="",
                  storageClasses=[{"name": "fast", "default": False, "parameters": {"profile": "ssd"}}])
    values["node"].update(region="eu-1", zone="pve7")
    values["sidecars"]["provisioner"] = "mirror.example/csi-provisioner:v9"
    values["image"].update(repository="registry.example/proxmox-csi", tag="1.2.3")
    found = objects(render.render(namespace="storage", values=values))
    check_consistency(found, values)
    node = found[("DaemonSet", "proxmox-csi-node")]
    plugin = container(node, "proxmox-csi")
    assert flag(plugin, "config") is None and ("Secret", "proxmox-csi-node-config") not in found
    assert flag(plugin, "region") == "eu-1" and flag(plugin, "zone") == "pve7"
    assert plugin["image"] == "registry.example/proxmox-csi:1.2.3"
    assert container(found[("Deployment", "proxmox-csi-controller")], "csi-provisioner")["image"] == "mirror.example/csi-provisioner:v9"
    assert found[("Secret", "proxmox-csi-config")]["metadata"]["namespace"] == "storage"


def test_the_secret_carries_the_config_the_driver_reads():
    found = objects(render.render())
    config = yaml.safe_load(found[("Secret", "proxmox-csi-config")]["stringData"]["config.yaml"])
    assert config["clusters"][0]["url"].startswith("https://") and config["clusters"][0]["tokenID"]


@pytest.mark.skipif(not os.path.exists(os.environ.get("DRIVER_BIN", "/nonexistent")), reason="needs DRIVER_BIN (scripts/test sets it)")
def test_the_driver_accepts_every_flag_the_manifests_pass():
    help_text = subprocess.run([os.environ["DRIVER_BIN"], "serve", "--help"], capture_output=True, text=True).stdout
    values = yaml.safe_load((render.CHART / "values.yaml").read_text())
    values["node"].update(region="r", zone="z")
    found = objects(render.render(values=values))
    for owner in (found[("Deployment", "proxmox-csi-controller")], found[("DaemonSet", "proxmox-csi-node")]):
        for argument in container(owner, "proxmox-csi")["args"]:
            assert f"{argument.split('=', 1)[0]} " in help_text or f"{argument.split('=', 1)[0]} <" in help_text, argument


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed (not a Debian package); the renderer's output is checked instead")
def test_kubectl_kustomize_builds_the_folder():
    built = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZE)], capture_output=True, text=True, check=True).stdout
    found = {(d["kind"], d["metadata"]["name"]) for d in documents(built)}
    assert found == set(objects(render.render())) | {("Namespace", "proxmox-csi")}


@pytest.mark.skipif(not shutil.which("helm"), reason="helm is not installed (not a Debian package); the renderer stands in for it")
def test_helm_renders_what_the_renderer_renders():
    built = subprocess.run(["helm", "template", "proxmox-csi", str(render.CHART), "--namespace", "proxmox-csi"],
                           capture_output=True, text=True, check=True).stdout
    assert {(d["kind"], d["metadata"]["name"]): d for d in documents(built)} == objects(render.render())


# Linked into the image's binary (deploy/release-build), shared in a debug build.
LINKED_IN = ("libswift", "libFoundation", "lib_Foundation", "libdispatch", "libBlocksRuntime", "libstdc++")
# In every Debian image: the C library and its companions.
ESSENTIAL = {"libc6", "libgcc-s1"}


def runtime_packages():
    """The packages the Dockerfile's final stage installs."""
    text = (DEPLOY / "Dockerfile").read_text()
    final = text[text.rindex("FROM "):]
    install = final[final.index("apt-get install"):final.index("rm -rf")]
    return {word for word in install.replace("\\", " ").split() if not word.startswith("-") and word not in ("apt-get", "install", "&&")}


def owner_package(path):
    """The Debian package that ships a library (merged /usr: try the path as found and as resolved)."""
    for candidate in (path, os.path.realpath(path), "*/" + os.path.basename(path)):
        owner = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if owner.returncode == 0:
            return owner.stdout.split(":")[0]
    return ""


def binary_under_test():
    """The binary as the image ships it (SHIPPED_BIN, built by deploy/release-build) when there is one."""
    for name in ("SHIPPED_BIN", "DRIVER_BIN"):
        if os.path.exists(os.environ.get(name, "/nonexistent")):
            return os.environ[name], name == "SHIPPED_BIN"
    return None, False


@pytest.mark.skipif(not (binary_under_test()[0] and shutil.which("dpkg")), reason="needs DRIVER_BIN or SHIPPED_BIN, and dpkg")
def test_the_image_installs_every_library_the_binary_links():
    binary, shipped = binary_under_test()
    needed = [line.split("[")[1].rstrip("]") for line in subprocess.run(
        ["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout.splitlines()
        if "(NEEDED)" in line]
    if shipped:
        linked_in_yet_shared = [library for library in needed if library.startswith(LINKED_IN)]
        assert not linked_in_yet_shared, f"deploy/release-build no longer links {linked_in_yet_shared} in"
    resolved = dict(line.split(" => ") for line in (l.strip().split(" (")[0] for l in subprocess.run(
        ["ldd", binary], capture_output=True, text=True, check=True).stdout.splitlines()) if " => " in line)
    # Loaded with dlopen at the first HTTP request (Sources/CCurl/loader.c), so readelf does not list it.
    loaded_later = subprocess.run(["strings", binary], capture_output=True, text=True).stdout.splitlines()
    assert "libcurl.so.4" in loaded_later, "the binary no longer names the libcurl it loads: update this test"
    for line in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout.splitlines():
        if line.strip().startswith("libcurl.so.4 ") and "x86-64" in line:
            resolved["libcurl.so.4"] = line.split(" => ")[1].strip()
            needed.append("libcurl.so.4")
            break
    packages = runtime_packages()
    missing = []
    for library in needed:
        if library.startswith(LINKED_IN) or library.startswith("ld-linux"):
            continue  # linked into the image's binary; ld.so is libc6's
        package = owner_package(resolved[library])
        if package not in packages | ESSENTIAL:
            missing.append(f"{library} ({package or 'no package'})")
    assert not missing, f"the Dockerfile's runtime stage lacks {missing}"
    assert {"xfsprogs", "e2fsprogs", "util-linux", "cryptsetup-bin", "ca-certificates"} <= packages
