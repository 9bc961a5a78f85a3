"""python3 -m pvesim: start the simulator (run from the simulator/ folder,
or with simulator/ on PYTHONPATH)."""
import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from .cluster import VM, Cluster, PVEError, parse_disk_size
from .api import Api
from .schema import Schema
from .server import Principal, Simulator, serve

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "default.json"


def load_scenario(path, task_seconds, default_task_seconds, data_dir=None):
    spec = json.loads(Path(path).read_text())
    cluster = Cluster(spec.get("cluster", "sim"), spec["nodes"], task_seconds, default_task_seconds)
    for s in spec["storages"]:
        cluster.add_storage(s["id"], s["type"], parse_disk_size(s["total"]), s.get("nodes"), data_dir)
    schema = Schema()
    api = Api(cluster, schema)
    for v in spec.get("vms", []):
        vm = VM(v["vmid"], v["node"], v["name"], v.get("status", "stopped"), v.get("config"))
        cluster.vms[vm.vmid] = vm
        for key, value in v.get("disks", {}).items():
            api._plug(vm, key, api._create_disk(vm, api._plan_disk(vm, key, value)))
    roles = spec.get("roles", {})

    def principal(entry):
        acl = [(path, roles.get(role, [role])) for path, role in entry.get("acl", [])]
        return Principal(entry["id"], acl, root=entry.get("root", False))

    users = {u["id"]: (u["password"], principal(u)) for u in spec.get("users", [])}
    tokens = {t["id"]: (t["secret"], principal(t)) for t in spec.get("tokens", [])}
    return cluster, schema, users, tokens


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pvesim", description="Proxmox VE API simulator (a test and demo tool).")
    parser.add_argument("--listen", default="127.0.0.1:8006", help="HOST:PORT (port 0 picks a free one)")
    parser.add_argument("--scenario", default=str(DEFAULT_SCENARIO), help="cluster, storages, VMs, users, tokens")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM); plain HTTP without")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM)")
    parser.add_argument("--task-seconds", default="", help="per task type, e.g. qmconfig=0.5,resize=1; qmconfig-each=0.1 adds that per disk beyond the first a config change hot-plugs")
    parser.add_argument("--default-task-seconds", type=float, default=0.02)
    parser.add_argument("--name-round-seconds", type=float, default=0.0,
                        help="cluster resources name VMs as of pvestatd's last round, this often (Proxmox: 10); 0 names them at once")
    parser.add_argument("--auth-failure-delay", type=float, default=3.0, help="seconds before a 401 (Proxmox: 3)")
    parser.add_argument("--ticket-lifetime", type=float, default=7200, help="seconds a ticket is valid")
    parser.add_argument("--data-dir", help="back every volume with a sparse file here")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--faults", default="[]", help="fault rules as JSON (see README), as PUT /_sim/faults takes")
    parser.add_argument("--local-vm", type=int, help="local mode: disks hot-plugged into this VM become loop devices")
    parser.add_argument("--sysfs-root", help="local mode: where to describe them, as the guest's /sys would")
    parser.add_argument("--guest-vm", type=int, help="guest mode: disks hot-plugged into this VM are plugged into a real QEMU")
    parser.add_argument("--guest-qmp", help="guest mode: that QEMU's QMP socket")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="exit when standard input closes: a lifeline for tests, which hold the other end")
    args = parser.parse_args(argv)

    task_seconds = {}
    for item in filter(None, args.task_seconds.split(",")):
        kind, _, seconds = item.partition("=")
        task_seconds[kind] = float(seconds)
    cluster, schema, users, tokens = load_scenario(args.scenario, task_seconds, args.default_task_seconds,
                                                   args.data_dir)
    cluster.name_round_seconds = args.name_round_seconds
    simulator = Simulator(cluster, schema, tokens, users, args.auth_failure_delay, args.ticket_lifetime)
    simulator.faults = json.loads(args.faults)
    for rule in simulator.faults:
        if "count" in rule:
            rule["remaining"] = rule["count"]
    local = None
    if args.local_vm:
        if not (args.sysfs_root and args.data_dir):
            parser.error("--local-vm needs --sysfs-root and --data-dir")
        from .localmode import LocalHost
        if args.local_vm not in cluster.vms:
            parser.error(f"--local-vm {args.local_vm}: the scenario has no such VM")
        local = LocalHost(args.local_vm, args.sysfs_root, cluster.vms[args.local_vm].config.get("smbios1", ""))
        cluster.listeners.append(local)
    if args.guest_vm:
        if not (args.guest_qmp and args.data_dir):
            parser.error("--guest-vm needs --guest-qmp and --data-dir")
        if args.guest_vm not in cluster.vms:
            parser.error(f"--guest-vm {args.guest_vm}: the scenario has no such VM")
        from .guestmode import GuestBridge
        cluster.listeners.append(GuestBridge(args.guest_vm, args.guest_qmp))
    host, _, port = args.listen.rpartition(":")
    server = serve(simulator, host, int(port), args.tls_cert, args.tls_key)
    bound = server.server_address[1]
    scheme = "https" if args.tls_cert else "http"
    print(f"pvesim listening on {scheme}://{host}:{bound}/api2/json", flush=True)
    if args.port_file:
        Path(args.port_file).write_text(str(bound))

    stop = threading.Event()
    if args.exit_on_stdin_eof:
        threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set()), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # A timed wait: signal handlers only run between waits in the main thread.
    while not stop.wait(0.2):
        pass
    server.shutdown()
    if local:
        local.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
