"""The Proxmox endpoints the simulator serves, one handler each.

A handler gets (cluster, params, caller) with params already checked
against the schema, runs under the cluster lock, and returns the `data`
of the response or raises PVEError. Handlers that change a VM's config
first wait for its config lock (`needs_config_lock`), outside the cluster lock.
"""
import os
import re
import time
import urllib.parse

from .cluster import (BUS_LIMITS, DISK_KEY, GiB, UNUSED_KEY, PVEError, copy_extents, format_size,
                      parse_alloc_size, parse_disk_size)
from .cluster import _uuid_for as _uuid_for_vm
from .schema import ParameterError, parse_property_string

ALL_PRIVILEGES = ["Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.Audit", "Sys.Audit", "VM.Allocate",
                  "VM.Audit", "VM.Clone", "VM.Config.CPU", "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory",
                  "VM.Config.Options",
                  "VM.PowerMgmt", "VM.Snapshot"]
VERSION = {"version": "9.1.1", "release": "9.1", "repoid": "pvesim00"}
SIZE_IN_GIB = re.compile(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(\d+(?:\.\d+)?)")


class Api:
    def __init__(self, cluster, schema):
        self.cluster = cluster
        self.schema = schema

    # ------------------------------------------------------------ read-only

    def version(self, p, caller):
        return VERSION

    def cluster_resources(self, p, caller):
        c = self.cluster
        kind = p.get("type")
        out = []
        if kind in (None, "node"):
            out += [{"id": f"node/{n}", "type": "node", "node": n, "status": "online"} for n in c.nodes]
        if kind in (None, "vm"):
            for vm in sorted(c.vms.values(), key=lambda v: v.vmid):
                entry = {"id": f"qemu/{vm.vmid}", "type": "qemu", "node": vm.node, "vmid": vm.vmid,
                         "status": vm.status, "template": int(vm.template), "maxdisk": 0, "disk": 0}
                name = c.resource_name(vm)
                if name is not None:  # none while being created, or before pvestatd's round
                    entry["name"] = name
                if vm.lock:
                    entry["lock"] = vm.lock
                # lock and tags come from the config at each call (pve-manager API2/Cluster.pm resources:
                # get_guest_config_properties([lock tags])); the name from pvestatd's rrd data, as of
                # its last round (Cluster.resource_name; no delay unless name_round_seconds is set).
                if vm.config.get("tags") and vm.name is not None:
                    entry["tags"] = vm.config["tags"]
                out.append(entry)
        if kind in (None, "storage"):
            for node in c.nodes:
                for s in c.storages_on(node):
                    out.append({"id": f"storage/{node}/{s.id}", "type": "storage", "node": node,
                                "storage": s.id, "plugintype": s.type, "shared": int(s.shared),
                                "content": ",".join(s.content), "disk": s.used, "maxdisk": s.total,
                                "status": "available"})
        return out

    def permissions(self, p, caller):
        """{path: {privilege: 1}} for the caller's ACL entries (root: everything on /)."""
        if caller.root:
            return {"/": {priv: 1 for priv in ALL_PRIVILEGES}}
        out = {}
        for path, privs in caller.acl:
            out.setdefault(path, {}).update({priv: 1 for priv in privs})
        return out

    def next_id(self, p, caller):
        return str(self.cluster.next_vmid())

    def nodes(self, p, caller):
        return [{"node": n, "status": "online", "type": "node"} for n in self.cluster.nodes]

    def node_storages(self, p, caller):
        self._node(p)
        return [self._storage_status(s) | {"storage": s.id} for s in self.cluster.storages_on(p["node"])]

    def storage_status(self, p, caller):
        self._node(p)
        return self._storage_status(self.cluster.storage(p["storage"], p["node"]))

    def _storage_status(self, s):
        return {"type": s.type, "content": ",".join(s.content), "active": 1, "enabled": 1,
                "shared": int(s.shared), "total": s.total, "used": s.used, "avail": s.total - s.used}

    def storage_content(self, p, caller):
        self._node(p)
        storage = self.cluster.storage(p["storage"], p["node"])
        if p.get("content") and p["content"] not in storage.content:
            return []
        return [{"volid": v.volid, "format": v.format, "size": v.size, "used": v.size, "vmid": v.vmid,
                 "ctime": v.ctime, "content": "images"}
                for v in sorted(storage.volumes.values(), key=lambda v: v.name)
                if "vmid" not in p or v.vmid == p["vmid"]]

    def volume_info(self, p, caller):
        self._node(p)
        volume = self._volume(p)
        return {"path": volume.path or f"/dev/pvesim/{volume.storage.id}/{volume.name}", "size": volume.size,
                "used": volume.size, "format": volume.format}

    def vm_list(self, p, caller):
        self._node(p)
        # qemu-server vmstatus reads names from the configs: `name` || "VM <vmid>".
        return [{"vmid": vm.vmid, "status": vm.status, "template": int(vm.template), "name": vm.name or f"VM {vm.vmid}"}
                for vm in self.cluster.vms.values() if vm.node == p["node"]]

    def vm_config(self, p, caller):
        """Pending changes applied unless `current` (qemu-server vm_config →
        load_current_config); the digest covers the whole file either way."""
        vm = self.cluster.vm(p["vmid"], p["node"])
        values = dict(vm.config) if p.get("current") else vm.effective()
        return values | {"digest": vm.digest()}

    def vm_pending(self, p, caller):
        """qemu-server vm_pending → pve-guest-common GuestHelpers
        config_with_pending_array: one item per key with its current `value`, its
        `pending` value, and `delete` 1 (2 when forced) for a pending delete. The
        loaded config carries its digest, so `digest` is an item too (format_pending
        skips it when printing)."""
        vm = self.cluster.vm(p["vmid"], p["node"])
        out = [{"key": "digest", "value": vm.digest()}]
        for key in sorted(set(vm.config) | set(vm.pending) | set(vm.pending_delete)):
            item = {"key": key}
            if key in vm.config:
                item["value"] = vm.config[key]
            if key in vm.pending:
                item["pending"] = vm.pending[key]
            if key in vm.pending_delete:
                item["delete"] = 2 if vm.pending_delete[key] else 1
            out.append(item)
        return out

    def node_tasks(self, p, caller):
        """pve-manager PVE/API2/Tasks.pm node_tasks: `source=active` lists running tasks."""
        self._node(p)
        source = p.get("source", "archive")
        out = []
        for task in sorted(self.cluster.tasks.values(), key=lambda t: t.start, reverse=True):
            if task.node != p["node"] or ("vmid" in p and task.id != str(p["vmid"])):
                continue
            if p.get("typefilter") and task.type != p["typefilter"]:
                continue
            running = task.status == "running"
            if (source == "active" and not running) or (source == "archive" and running):
                continue
            item = {"upid": task.upid, "node": task.node, "pid": task.pid, "pstart": task.pstart,
                    "starttime": int(task.start), "type": task.type, "id": task.id, "user": task.user}
            if not running:
                item["status"], item["endtime"] = task.exitstatus, int(task.end)
            out.append(item)
        return out[p.get("start", 0):][:p.get("limit", 50) or None]

    def vm_status(self, p, caller):
        vm = self.cluster.vm(p["vmid"], p["node"])
        out = {"vmid": vm.vmid, "name": vm.name, "status": vm.status, "qmpstatus": vm.status}
        if vm.lock:
            out["lock"] = vm.lock
        return out

    def snapshot_list(self, p, caller):
        vm = self.cluster.vm(p["vmid"], p["node"])
        items = [{"name": name, "description": s["description"], "snaptime": s["snaptime"]}
                 for name, s in vm.snapshots.items()]
        return items + [{"name": "current", "description": "You are here!", "running": int(vm.status == "running")}]

    def task_status(self, p, caller):
        task = self.cluster.tasks.get(p["upid"])
        if task is None:
            if not p["upid"].startswith("UPID:"):
                raise PVEError("unable to parse worker upid", 400)
            raise PVEError(f"no such task '{p['upid']}'", 400)
        out = {"upid": task.upid, "node": task.node, "pid": task.pid, "pstart": task.pstart,
               "starttime": int(task.start), "type": task.type, "id": task.id, "user": task.user,
               "status": task.status}
        if task.status == "stopped":
            out["exitstatus"] = task.exitstatus
        return out

    # ------------------------------------------------------------ volumes

    def allocate(self, p, caller):
        self._node(p)
        storage = self.cluster.storage(p["storage"], p["node"])
        return storage.allocate(p["vmid"], p["filename"], parse_alloc_size(p["size"]), p.get("format")).volid

    def delete_volume(self, p, caller):
        self._node(p)
        volume = self._volume(p)
        # No check of the owner guest: pve-storage API2/Storage/Content.pm delete
        # → Storage.pm vdisk_free free it whatever uses it (only the web UI refuses).
        task = self.cluster.start_task(p["node"], "imgdel", volume.volid, caller.id,
                                       lambda: volume.storage.free(volume))
        return self._maybe_wait(task, p.get("delay"))

    # ------------------------------------------------------------ VM config

    def update_config_async(self, p, caller):
        return self._update_config(p, caller, sync=False)

    def update_config_sync(self, p, caller):
        return self._update_config(p, caller, sync=True)

    def _update_config(self, p, caller, sync):
        """qemu-server src/PVE/API2/Qemu.pm update_vm: every change goes to the
        [PENDING] section first (deletes to `pending.delete`); then, on a running
        VM, vmconfig_hotplug_pending applies what it can hot-plug and leaves the
        rest pending; on a stopped VM vmconfig_apply_pending applies all of it.
        Hot-plug failures are collected and raised at the end (raise_param_exc),
        so the task fails and the change stays pending."""
        c = self.cluster
        vm = c.vm(p["vmid"], p["node"])
        self._check_unlocked(vm, p)
        if p.get("digest") and p["digest"] != vm.digest():
            raise PVEError("checksum mismatch (file change by other user?)")
        reserved = {"node", "vmid", "digest", "delete", "revert", "force", "background_delay", "skiplock"}
        deletes = [k for k in re.split(r"[,;\s]+", p.get("delete", "")) if k]
        reverts = [k for k in re.split(r"[,;\s]+", p.get("revert", "")) if k]
        sets = {k: v for k, v in p.items() if k not in reserved}
        for key in deletes:
            if key in sets:
                raise PVEError(f"you can't modify and delete the same setting '{key}'", 400)
        for key in reverts:
            if key in sets or key in deletes:
                raise PVEError(f"you can't modify, delete or revert the same setting '{key}'", 400)
        # Check now what Proxmox checks before the worker starts.
        planned = {key: self._plan_disk(vm, key, value) for key, value in sets.items() if DISK_KEY.match(key)}
        force = bool(p.get("force", False))

        def effect():
            # The worker loads the config again under the VM's lock and checks
            # the digest and the lock once more (update_vm_api: $updatefn calls
            # $load_and_check_config->(1)), so a change made after the request
            # was accepted (another user's `qm set --hotplug`) fails the task.
            if p.get("digest") and p["digest"] != vm.digest():
                raise PVEError("checksum mismatch (file change by other user?)")
            self._check_unlocked(vm, p)
            modified = set()
            for key in reverts:
                if DISK_KEY.match(key) and key in vm.pending:
                    self._register_unused(vm, vm.pending[key])
                vm.pending.pop(key, None)
                vm.pending_delete.pop(key, None)
            for key in deletes:
                modified.add(key)
                value = vm.config.get(key, vm.pending.get(key))
                if value is None:
                    continue  # "cannot delete 'key' - not set in current configuration!" (a warning)
                pending_value = vm.pending.pop(key, None)
                if UNUSED_KEY.match(key):
                    self._check_protection(vm, f"can't remove unused disk '{value.split(',')[0]}'")
                    self._free_volid(value.split(",")[0], vm.node)
                    vm.config.pop(key, None)
                    continue
                if DISK_KEY.match(key):
                    self._check_protection(vm, f"can't remove drive '{key}'")
                    if pending_value is not None:
                        self._register_unused(vm, pending_value)
                vm.pending_delete[key] = force
            for key, value in sets.items():
                modified.add(key)
                if vm.pending.get(key) == _option_text(value):
                    continue
                if key in planned:
                    if key in vm.pending:
                        self._register_unused(vm, vm.pending[key])
                    new_value = self._create_disk(vm, planned[key])
                    self._record_if_swapped(vm, key, new_value)
                    vm.pending[key] = new_value
                else:
                    vm.pending[key] = _option_text(value)  # the config file holds text: booleans as 1/0
                vm.pending_delete.pop(key, None)
            self._cleanup_pending(vm)
            errors = self._hotplug_pending(vm, modified) if vm.status == "running" else self._apply_pending(vm)
            if errors:
                # raise_param_exc in a worker: the task log's last line, newlines folded.
                raise PVEError("400 Parameter verification failed. "
                               + " ".join(f"{key}: {text}" for key, text in sorted(errors.items())))

        if sync:
            effect()
            return None
        disks = len(planned) + sum(1 for key in deletes if DISK_KEY.match(key))
        # An import-from copy runs inside the config task (create_disks), as long as the copy takes.
        c.extra_task_seconds += self._import_seconds(planned)
        task = c.start_task(vm.node, "qmconfig", vm.vmid, caller.id, effect, items=disks)
        return self._maybe_wait(task, p.get("background_delay"), fail_message=f"failed to update VM {vm.vmid}")

    def _record_if_swapped(self, vm, key, value):
        """A write that puts a volume into a slot another volume holds (current or
        pending) asks Proxmox to unplug one and plug the other into one device."""
        held = vm.pending.get(key) or vm.config.get(key)
        if held and held.split(",")[0] != value.split(",")[0]:
            self.cluster.in_place_swaps.append({"vm": vm.vmid, "key": key, "held": held.split(",")[0],
                                                "new": value.split(",")[0]})

    def _import_seconds(self, planned):
        """How long the import-from copies of planned disks take (`import-per-gib` s per GiB copied)."""
        copied = sum(plan["source"].size for plan in planned.values() if plan.get("source") is not None)
        return copied / GiB * self.cluster.copy_seconds_per_gib()

    def _cleanup_pending(self, vm):
        """guest-common cleanup_pending: drop pending values equal to the current
        ones, and pending deletes of keys the current config lacks."""
        for key in [k for k, v in vm.pending.items() if vm.config.get(k) == v]:
            del vm.pending[key]
        for key in [k for k in vm.pending_delete if k not in vm.config]:
            del vm.pending_delete[key]

    def _hotplug_pending(self, vm, modified):
        """qemu-server vmconfig_hotplug_pending, for drives: a change of a drive
        this call touched is applied when `hotplug` has `disk` (never for ide/sata),
        else it stays pending ("skip"); a failing plug/unplug stays pending and
        is reported as "hotplug problem - ...". Other keys are applied at once
        (the simulator knows no option that needs a reboot)."""
        errors = {}
        can_plug = "disk" in vm.hotplug_features()

        def hotplug(key, action, change):
            """Applies a drive change unless it must stay pending; True when applied."""
            if not can_plug or re.match(r"(efidisk|ide|sata|tpmstate)\d+", key):
                return False  # "skip": stays pending
            failure = self.cluster.hotplug_fault(vm, action)
            if failure:
                errors[key] = f"hotplug problem - {failure}"
                return False
            before = dict(vm.config)
            try:
                change()
            except Exception as error:  # a real QEMU refused (guest mode): the change stays pending
                vm.config.clear()
                vm.config.update(before)
                errors[key] = f"hotplug problem - {error}"
                return False
            return True

        for key in sorted(k for k in vm.pending_delete if k in modified):
            if DISK_KEY.match(key):
                if not hotplug(key, "unplug", lambda: self._detach(vm, key, force=vm.pending_delete[key])):
                    continue
            else:
                vm.config.pop(key, None)
            del vm.pending_delete[key]
        for key in sorted(k for k in vm.pending if k in modified):
            value = vm.pending[key]
            if DISK_KEY.match(key):
                if not hotplug(key, "plug", lambda: self._plug(vm, key, value)):
                    continue
            else:
                vm.config[key] = value
            del vm.pending[key]
        return errors

    def _apply_pending(self, vm):
        """qemu-server vmconfig_apply_pending: a stopped VM takes every pending change."""
        for key in sorted(vm.pending_delete):
            if key in vm.config:
                if DISK_KEY.match(key):
                    self._detach(vm, key, force=vm.pending_delete[key])
                else:
                    del vm.config[key]
        vm.pending_delete.clear()
        for key, value in sorted(vm.pending.items()):
            if DISK_KEY.match(key):
                self._plug(vm, key, value)
            else:
                vm.config[key] = value
        vm.pending.clear()
        return {}

    def _check_protection(self, vm, what):
        """guest-common check_protection: protection=1 forbids removing disks and the VM."""
        if vm.config.get("protection") in ("1", 1, True):
            raise PVEError(f"{what} - protection mode enabled")

    def _register_unused(self, vm, value):
        """qemu-server vmconfig_register_unused_drive: a drive value dropped from
        the config becomes unusedN when the VM owns its volume."""
        volid = value.split(",")[0]
        try:
            volume = self.cluster.volume(volid, vm.node)
        except PVEError:
            return
        if volume.vmid == vm.vmid and volid not in [v for v, _ in vm.disks().values()]:
            vm.config[_free_unused_key(vm)] = volid

    def unlink(self, p, caller):
        vm = self.cluster.vm(p["vmid"], p["node"])
        self._check_unlocked(vm, p)
        for key in [k for k in re.split(r"[,;\s]+", p["idlist"]) if k]:
            if key in vm.config:
                volid, _ = vm.disks().get(key, (None, None))
                del vm.config[key]
                if volid and p.get("force"):
                    self._free_volid(volid, vm.node)
        return None

    def _plan_disk(self, vm, key, value):
        """Parses a disk value and decides what it refers to; raises what Proxmox would."""
        fmt = self._disk_format(key)
        options = parse_property_string(fmt, value)
        bus, index = re.match(r"([a-z]+)(\d+)", key).groups()
        if bus in BUS_LIMITS and int(index) >= BUS_LIMITS[bus]:
            raise PVEError(f"invalid disk key '{key}'", 400)
        serial = options.get("serial")
        if serial is not None and len(urllib.parse.unquote(serial).encode()) > 20:
            raise PVEError(f"{key}: serial '{urllib.parse.unquote(serial)}' is too long (max 20 bytes)", 400)
        file = options.pop("file")
        new = SIZE_IN_GIB.fullmatch(file)
        if new:
            storage = self.cluster.storage(new.group(1), vm.node)
            source = None
            if "import-from" in options:
                source = self.cluster.volume(options.pop("import-from"), vm.node)
            elif float(new.group(2)) == 0:
                raise PVEError(f"{key}: size 0 needs 'import-from'", 400)
            return {"new": storage, "gib": float(new.group(2)), "source": source, "options": options}
        return {"volume": self.cluster.volume(file, vm.node), "options": options}

    def _disk_format(self, key):
        props = self.schema.methods["POST /nodes/{node}/qemu/{vmid}/config"]["parameters"]["properties"]
        name = re.sub(r"\d+$", "[n]", key) if key not in props else key
        return props[name]["format"]

    def _create_disk(self, vm, plan):
        """qemu-server create_disks: allocates `<storage>:<GiB>` and copies
        `import-from` now, before the change is pending; returns the drive value
        Proxmox writes (volume first, options sorted, then size)."""
        if "new" in plan:
            storage = plan["new"]
            fmt = plan["options"].get("format", "raw")
            size = plan["source"].size if plan["source"] else int(plan["gib"] * GiB)
            volume = storage.allocate(vm.vmid, storage.next_disk_name(vm.vmid, fmt), size, fmt)
            if plan["source"] is not None:
                copy_data(plan["source"], volume)
        else:
            volume = plan["volume"]
        options = {k: v for k, v in plan["options"].items() if k != "size"}
        parts = [volume.volid] + [f"{k}={_option_text(v)}" for k, v in sorted(options.items())]
        parts.append(f"size={format_size(volume.size)}")
        return ",".join(parts)

    def _plug(self, vm, key, value):
        """Makes `value` the current drive at `key`: an old drive there is unplugged first."""
        volid = value.split(",")[0]
        old = vm.config.get(key)
        if old is not None and old.split(",")[0] != volid:
            self._detach(vm, key, force=False)
        vm.config[key] = value
        for unused, (ref, _) in list(vm.disks().items()):
            if UNUSED_KEY.match(unused) and ref == volid:
                del vm.config[unused]  # an unused volume made a drive again is no longer unused
        # Proxmox lets two VMs use one volume; the driver must never make it so.
        self.cluster.record_if_doubly_attached(volid)
        if old is None or old.split(",")[0] != volid:
            try:
                volume = self.cluster.volume(volid, vm.node)
            except PVEError:
                return
            if vm.hotplug_disks():
                self.cluster.notify("attach", vm, key, volume)

    def _detach(self, vm, key, force):
        volid, _ = vm.disks().get(key, (None, None))
        del vm.config[key]
        if volid is None:
            return
        if UNUSED_KEY.match(key):
            self._free_volid(volid, vm.node)
            return
        try:
            volume = self.cluster.volume(volid, vm.node)
        except PVEError:
            return
        if vm.hotplug_disks():
            self.cluster.notify("detach", vm, key, volume)
        if force:
            volume.storage.free(volume)
        elif volume.vmid == vm.vmid:
            vm.config[_free_unused_key(vm)] = volid

    def _free_volid(self, volid, node):
        try:
            volume = self.cluster.volume(volid, node)
        except PVEError:
            return
        volume.storage.free(volume)

    # ------------------------------------------------------------ resize, move

    def resize(self, p, caller):
        vm = self.cluster.vm(p["vmid"], p["node"])
        self._check_unlocked(vm, p)
        if p.get("digest") and p["digest"] != vm.digest():
            raise PVEError("checksum mismatch (file change by other user?)")

        def effect():
            if p["disk"] not in vm.config:
                raise PVEError(f"disk '{p['disk']}' does not exist")
            volid, options = vm.disks()[p["disk"]]
            volume = self.cluster.volume(volid, vm.node)
            text = p["size"]
            wanted = volume.size + parse_disk_size(text[1:]) if text.startswith("+") else parse_disk_size(text)
            if wanted < volume.size:
                raise PVEError("shrinking disks is not supported")
            volume.storage.grow(volume, wanted)
            kept = [o for o in options.split(",") if o and not o.startswith("size=")]
            vm.config[p["disk"]] = ",".join([volid, *kept, f"size={format_size(volume.size)}"])
            if vm.status == "running":
                self.cluster.notify("resize", vm, p["disk"], volume)

        return self.cluster.start_task(vm.node, "resize", vm.vmid, caller.id, effect).upid

    def move_disk(self, p, caller):
        c = self.cluster
        vm = c.vm(p["vmid"], p["node"])
        self._check_unlocked(vm, p)
        if p.get("digest") and p["digest"] != vm.digest():
            raise PVEError("checksum mismatch (file change by other user?)")
        key = p["disk"]
        if key not in vm.config:
            raise PVEError(f"disk '{key}' does not exist")
        volid, options = vm.disks()[key]
        if "target-vmid" in p:
            target = c.vm(p["target-vmid"])
            if target.node != vm.node:
                raise PVEError("Reassigning disks to a VM on another node is not supported")
            if vm.status == "running" and not UNUSED_KEY.match(key):
                raise PVEError(f"cannot move disk '{key}' of running VM {vm.vmid} to another VM")
            target_key = p.get("target-disk") or key
            if target_key in target.config:
                raise PVEError(f"target disk '{target_key}' already exists on VM {target.vmid}")

            def reassign():
                volume = c.volume(volid, vm.node)
                storage = volume.storage
                new_name = storage.next_disk_name(target.vmid, volume.format)
                del storage.volumes[volume.name]
                volume.name, volume.vmid = new_name, target.vmid
                storage.volumes[new_name] = volume
                del vm.config[key]
                kept = [o for o in options.split(",") if o]
                target.config[target_key] = ",".join([volume.volid, *kept]) if not UNUSED_KEY.match(target_key) \
                    else volume.volid

            return c.start_task(vm.node, "qmmove", vm.vmid, caller.id, reassign).upid
        if "storage" not in p:
            raise PVEError("either 'storage' or 'target-vmid' is needed", 400)
        target_storage = c.storage(p["storage"], vm.node)

        def move():
            volume = c.volume(volid, vm.node)
            fmt = p.get("format") or (volume.format if volume.format in target_storage.rules["formats"] else "raw")
            copy = target_storage.allocate(vm.vmid, target_storage.next_disk_name(vm.vmid, fmt), volume.size, fmt)
            copy_data(volume, copy)
            kept = [o for o in options.split(",") if o]
            vm.config[key] = ",".join([copy.volid, *kept])
            if p.get("delete"):
                volume.storage.free(volume)
            else:
                vm.config[_free_unused_key(vm)] = volume.volid

        return c.start_task(vm.node, "qmmove", vm.vmid, caller.id, move).upid

    # ------------------------------------------------------------ VMs

    def create_vm(self, p, caller):
        c = self.cluster
        self._node(p)
        vmid = p["vmid"]
        if vmid in c.vms:
            raise PVEError(f"unable to create VM {vmid} - VM {vmid} already exists on node '{c.vms[vmid].node}'")
        from .cluster import VM
        # qemu-server create_vm: create_and_lock_config writes a config holding
        # only `lock: create`; disks are allocated (and import-from copied) in the
        # worker, and name, description and the rest come with the final config.
        vm = VM(vmid, p["node"], None, status="stopped")
        vm.config = {"lock": "create"}
        c.vms[vmid] = vm
        settings = {k: v for k, v in p.items() if k not in ("node", "vmid", "start")}
        planned = {k: self._plan_disk(vm, k, v) for k, v in settings.items() if DISK_KEY.match(k)}

        def effect():
            values = {}
            try:
                for key, value in settings.items():
                    values[key] = self._create_disk(vm, planned[key]) if key in planned else _option_text(value)
            except PVEError as error:
                # create_vm's cleanup: the disks made so far are freed, the config removed.
                for value in (v for k, v in values.items() if k in planned):
                    self._free_volid(value.split(",")[0], vm.node)
                c.vms.pop(vmid, None)
                raise PVEError(f"unable to create VM {vmid} - {error.message}")
            vm.config = {"smbios1": f"uuid={_uuid_for_vm(vmid)}"} | values
            for key in planned:
                self.cluster.record_if_doubly_attached(values[key].split(",")[0])
            if p.get("start"):
                vm.status = "running"

        c.extra_task_seconds += self._import_seconds(planned)
        return c.start_task(p["node"], "qmcreate", vmid, caller.id, effect).upid

    def destroy_vm(self, p, caller):
        c = self.cluster
        vm = c.vm(p["vmid"], p["node"])
        self._check_unlocked(vm, p)
        self._check_protection(vm, f"can't remove VM {vm.vmid}")
        if vm.status == "running":
            raise PVEError(f"VM {vm.vmid} is running - destroy failed")

        def effect():
            for key, (volid, _) in vm.disks().items():
                try:
                    volume = c.volume(volid, vm.node)
                except PVEError:
                    continue
                if volume.vmid == vm.vmid:
                    volume.storage.free(volume)
            del c.vms[vm.vmid]

        return c.start_task(vm.node, "qmdestroy", vm.vmid, caller.id, effect).upid

    def create_snapshot(self, p, caller):
        c = self.cluster
        vm = c.vm(p["vmid"], p["node"])
        self._check_unlocked(vm, p)
        name = p["snapname"]
        if name in vm.snapshots or name == "current":
            raise PVEError(f"snapshot name '{name}' already used")
        vm.config["lock"] = "snapshot"

        def effect():
            # guest-common AbstractConfig snapshot_create: every drive must have the feature
            # (has_feature 'snapshot'), then __snapshot_create_vol_snapshot takes
            # PVE::Storage::volume_snapshot of each; a failure deletes the ones taken.
            vm.config.pop("lock", None)
            volumes = {}
            for key, (volid, _) in vm.disks().items():
                if UNUSED_KEY.match(key):
                    continue
                volume = c.volume(volid, vm.node)
                if not volume.storage.supports_snapshots(volume):
                    raise PVEError("snapshot feature is not available")
                volumes[volid] = volume
            taken = []
            try:
                for volume in volumes.values():
                    if volume.format == "qcow2" and c.running_vms_using(volume, except_vmid=vm.vmid):
                        # qemu-img snapshot on an image another QEMU has open: Proxmox does not stop it.
                        c.unsafe_snapshots.append({"volid": volume.volid, "snapshot": name, "vmid": vm.vmid})
                    volume.storage.snapshot(volume, name)
                    taken.append(volume)
            except PVEError:
                for volume in taken:
                    volume.storage.snapshot_delete(volume, name)
                raise
            vm.snapshots[name] = {"description": p.get("description", ""), "snaptime": int(time.time()),
                                  "config": dict(vm.config), "sizes": {v: volume.size for v, volume in volumes.items()}}

        return c.start_task(vm.node, "qmsnapshot", vm.vmid, caller.id, effect).upid

    def delete_snapshot(self, p, caller):
        c = self.cluster
        vm = c.vm(p["vmid"], p["node"])
        self._check_unlocked(vm, p)
        if p["snapname"] not in vm.snapshots:
            raise PVEError(f"snapshot '{p['snapname']}' does not exist")

        def effect():
            # snapshot_delete: PVE::Storage::volume_snapshot_delete for each drive of the
            # snapshot's config (a volume freed since has no snapshot left to delete).
            snapshot = vm.snapshots.pop(p["snapname"], None) or {"config": {}}
            for key, value in snapshot["config"].items():
                if not DISK_KEY.match(key):
                    continue
                try:
                    volume = c.volume(value.split(",")[0], vm.node)
                except PVEError:
                    continue
                volume.storage.snapshot_delete(volume, p["snapname"])

        return c.start_task(vm.node, "qmdelsnapshot", vm.vmid, caller.id, effect).upid

    def clone(self, p, caller):
        c = self.cluster
        vm = c.vm(p["vmid"], p["node"])
        newid = p["newid"]
        if newid in c.vms:
            raise PVEError(f"unable to create VM {newid}: config file already exists")
        snapname = p.get("snapname")
        if snapname and snapname not in vm.snapshots:
            raise PVEError(f"snapshot '{snapname}' does not exist")
        if not vm.template and p.get("full") is False:
            raise PVEError("Linked clone feature is not available")
        target_node = p.get("target", vm.node)
        source = vm.snapshots[snapname] if snapname else {"config": vm.config, "sizes": None}
        from .cluster import VM
        # clone_vm writes a temporary config holding only `lock: clone`; the name and the
        # rest come with the final write, once the disks are copied (API2/Qemu.pm clone_vm).
        clone = VM(newid, target_node, None)
        clone.config = {"lock": "clone"}
        c.vms[newid] = clone

        def effect():
            try:
                final = {}
                for key, value in source["config"].items():
                    if UNUSED_KEY.match(key) or key in ("lock", "name", "smbios1", "snaptime", "parent", "vmstate"):
                        continue
                    if not DISK_KEY.match(key):
                        final[key] = value
                        continue
                    volid, _, options = value.partition(",")
                    volume = c.volume(volid, vm.node)
                    if snapname and not volume.storage.can_copy_from_snapshot(volume):
                        raise PVEError(f"Full clone feature is not supported for a snapshot of '{volid}' ({key})")
                    storage = c.storage(p["storage"], target_node) if p.get("storage") else volume.storage
                    size = (source["sizes"] or {}).get(volid, volume.size)
                    fmt = volume.format if volume.format in storage.rules["formats"] else "raw"
                    copy = storage.allocate(newid, storage.next_disk_name(newid, fmt), size, fmt)
                    snapshot_data = volume.snapshots.get(snapname, {}).get("path") if snapname else None
                    if snapname and snapname not in volume.snapshots:
                        raise PVEError(f"volume '{volid}' has no snapshot '{snapname}'")
                    copy_data(volume, copy, snapshot_data)
                    kept = [o for o in options.split(",") if o and not o.startswith("size=")]
                    final[key] = ",".join([copy.volid, *kept, f"size={format_size(size)}"])
                    clone.config[key] = final[key]  # what a failure must free
                final["name"] = p.get("name") or f"Copy-of-VM-{vm.name}"
                if p.get("description"):
                    final["description"] = p["description"]
                final["smbios1"] = f"uuid={_uuid_for_vm(newid)}"
                clone.config = final
            except PVEError:
                for key, (volid, _) in clone.disks().items():
                    self._free_volid(volid, target_node)
                c.vms.pop(newid, None)
                raise

        # A full clone copies every disk: as long as an import of the same bytes takes.
        copied = 0
        for key, (volid, _) in vm.disks(source["config"]).items():
            if not UNUSED_KEY.match(key):
                try:
                    copied += (source["sizes"] or {}).get(volid) or c.volume(volid, vm.node).size
                except PVEError:
                    pass  # the effect reports it
        c.extra_task_seconds += copied / GiB * c.copy_seconds_per_gib()
        return c.start_task(vm.node, "qmclone", vm.vmid, caller.id, effect).upid

    def migrate_vm(self, p, caller):
        """An offline migration (qemu-server API2/Qemu.pm migrate_vm, QemuMigrate.pm
        scan_local_volumes and sync_offline_local_volumes): every local volume the
        config holds, unused ones too, is copied to the same storage on the target
        (PVE::Storage::storage_migrate with allow_rename: a name taken there gets the
        next free one) and freed on the source; the config moves with them."""
        c = self.cluster
        vm = c.vm(p["vmid"], p["node"])
        target = p["target"]
        if target == vm.node:
            raise ParameterError({"target": "target is local node."})
        if target not in c.nodes:
            raise PVEError(f"no such cluster node '{target}'")
        self._check_unlocked(vm, p)  # PVE::QemuConfig->check_lock
        if vm.status == "running" and not p.get("online"):
            raise PVEError("can't migrate running VM without --online")
        if vm.status == "running":
            raise PVEError("online migration is not simulated")
        moves, problems = [], []
        for key, (volid, _) in sorted(vm.disks().items()):
            storage_id = volid.partition(":")[0]
            source = c.storages.get((storage_id, vm.node)) or c.storages.get((storage_id, None))
            if source is None:
                raise PVEError(f"storage '{storage_id}' does not exist")
            if source.shared:
                continue
            # check_storage_availability / target_storage_check_available
            destination = c.storages.get((storage_id, target))
            if destination is None:
                raise PVEError(f"storage '{storage_id}' is not available on node '{target}'")
            volume = source.volume_by_volid_part(volid.partition(":")[2])
            if volume is None:
                raise PVEError(f"volume '{volid}' does not exist")
            if volume.vmid != vm.vmid:
                problems.append(f"can't migrate local disk '{volid}': owned by other VM (owner = VM {volume.vmid})")
                continue
            if volume.snapshots and not (source.type == "zfspool" or volume.format == "qcow2"):
                problems.append(f"can't migrate local disk '{volid}': non-migratable snapshot exists")
                continue
            if source.type not in ("dir", "btrfs", "zfspool", "lvmthin", "lvm"):
                problems.append(f"can't migrate '{volid}' - storage type '{source.type}' not supported")
                continue
            moves.append((key, volume, destination))
        if problems:
            # The worker's scan logs each and dies with this: the task fails, the VM stays.
            def refused():
                raise PVEError("can't migrate VM - check log (" + "; ".join(problems) + ")")
            return c.start_task(vm.node, "qmigrate", vm.vmid, caller.id, refused).upid
        vm.config["lock"] = "migrate"

        def effect():
            try:
                for key, volume, destination in moves:
                    name = volume.name
                    if name in destination.volumes:
                        name = destination.next_disk_name(vm.vmid, volume.format)
                    copy = destination.allocate(vm.vmid, name, volume.size, volume.format)
                    copy_data(volume, copy, None)
                    copy.snapshots = dict(volume.snapshots)
                    value = vm.config[key]
                    vm.config[key] = copy.volid + value[len(value.split(",")[0]):]
                    volume.storage.free(volume)
                vm.node = target
            finally:
                vm.config.pop("lock", None)

        copied = sum(volume.size for _, volume, _ in moves)
        c.extra_task_seconds += copied / GiB * c.copy_seconds_per_gib()
        return c.start_task(vm.node, "qmigrate", vm.vmid, caller.id, effect).upid

    # ------------------------------------------------------------ helpers

    def _node(self, p):
        if p["node"] not in self.cluster.nodes:
            raise PVEError(f"hostname lookup '{p['node']}' failed - failed to get address info for: "
                           f"{p['node']}: Name or service not known", 595)

    def _volume(self, p):
        text = p["volume"]
        if ":" not in text:
            text = f"{p['storage']}:{text}"
        return self.cluster.volume(text, p["node"])

    def _check_unlocked(self, vm, p):
        if vm.lock and not p.get("skiplock"):
            raise PVEError(f"VM is locked ({vm.lock})")

    def _maybe_wait(self, task, delay, fail_message=None):
        """`background_delay` / `delay`: answer null when the task ends in time.
        update_vm (qemu-server API2/Qemu.pm) dies "failed to update VM N: <status>"
        when its task failed within background_delay: a 500, not a UPID."""
        if delay:
            self.cluster.lock.release()
            try:
                deadline = time.time() + delay
                while time.time() < deadline:
                    with self.cluster.lock:
                        self.cluster.advance()
                        if task.status == "stopped":
                            if task.exitstatus != "OK" and fail_message:
                                raise PVEError(f"{fail_message}: {task.exitstatus}")
                            return None if task.exitstatus == "OK" else task.upid
                    time.sleep(0.005)
            finally:
                self.cluster.lock.acquire()
        return task.upid


def copy_data(source, target, source_path=None):
    """import-from and full clones copy the bytes when volumes have backing files
    (from `source_path`: a snapshot's data, when the copy is of a snapshot)."""
    path = source_path or source.path
    if not (path and target.path):
        return
    # Only the data extents: the target is a fresh sparse file, and copying a
    # 10 GiB volume's holes byte by byte would make every restore take minutes.
    copy_extents(path, target.path)


def _free_unused_key(vm):
    index = 0
    while f"unused{index}" in vm.config:
        index += 1
    return f"unused{index}"


def _option_text(value):
    if value is True:
        return "1"
    if value is False:
        return "0"
    return str(value)


# Schema key -> (handler name, needs the VM's config lock).
ROUTES = {
    "GET /version": ("version", False),
    "GET /access/permissions": ("permissions", False),
    "GET /cluster/resources": ("cluster_resources", False),
    "GET /cluster/nextid": ("next_id", False),
    "GET /nodes": ("nodes", False),
    "GET /nodes/{node}/storage": ("node_storages", False),
    "GET /nodes/{node}/storage/{storage}/status": ("storage_status", False),
    "GET /nodes/{node}/storage/{storage}/content": ("storage_content", False),
    "POST /nodes/{node}/storage/{storage}/content": ("allocate", False),
    "GET /nodes/{node}/storage/{storage}/content/{volume}": ("volume_info", False),
    "DELETE /nodes/{node}/storage/{storage}/content/{volume}": ("delete_volume", False),
    "GET /nodes/{node}/qemu": ("vm_list", False),
    "POST /nodes/{node}/qemu": ("create_vm", False),
    "DELETE /nodes/{node}/qemu/{vmid}": ("destroy_vm", True),
    "GET /nodes/{node}/qemu/{vmid}/config": ("vm_config", False),
    "GET /nodes/{node}/qemu/{vmid}/pending": ("vm_pending", False),
    "GET /nodes/{node}/tasks": ("node_tasks", False),
    "POST /nodes/{node}/qemu/{vmid}/config": ("update_config_async", True),
    "PUT /nodes/{node}/qemu/{vmid}/config": ("update_config_sync", True),
    "GET /nodes/{node}/qemu/{vmid}/status/current": ("vm_status", False),
    "PUT /nodes/{node}/qemu/{vmid}/unlink": ("unlink", True),
    "PUT /nodes/{node}/qemu/{vmid}/resize": ("resize", True),
    "POST /nodes/{node}/qemu/{vmid}/move_disk": ("move_disk", True),
    "GET /nodes/{node}/qemu/{vmid}/snapshot": ("snapshot_list", False),
    "POST /nodes/{node}/qemu/{vmid}/snapshot": ("create_snapshot", True),
    "DELETE /nodes/{node}/qemu/{vmid}/snapshot/{snapname}": ("delete_snapshot", True),
    "POST /nodes/{node}/qemu/{vmid}/clone": ("clone", True),
    "POST /nodes/{node}/qemu/{vmid}/migrate": ("migrate_vm", True),
    "GET /nodes/{node}/tasks/{upid}/status": ("task_status", False),
}
