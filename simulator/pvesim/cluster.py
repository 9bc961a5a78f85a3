"""The simulated cluster's state and the operations Proxmox performs on it.

Everything that takes time in Proxmox (config changes, resize, move, clone,
snapshots, deletes) is a Task with a real UPID and a duration; its effect is
applied when it finishes. Config changes of one VM are serialized the way
Proxmox's per-VM flock serializes them: a change waits for the previous one,
and gives up after 10 s with Proxmox's lock-timeout error.
"""
import hashlib
import os
import re
import threading
import time
import urllib.parse

GiB = 1024 ** 3
MiB = 1024 ** 2
KiB = 1024

DISK_KEY = re.compile(r"(scsi|virtio|sata|ide)(\d+)$|efidisk0$|tpmstate0$")
UNUSED_KEY = re.compile(r"unused(\d+)$")
BUS_LIMITS = {"scsi": 31, "virtio": 16, "sata": 6, "ide": 4}
LOCK_WAIT_SECONDS = 10


class PVEError(Exception):
    """A handler error: HTTP status (500 unless said) and Proxmox's message."""

    def __init__(self, message, status=500):
        super().__init__(message)
        self.status = status
        self.message = message


# What each storage type accepts, as pve-storage's plugins do.
STORAGE_TYPES = {
    "lvmthin": {"formats": ["raw"], "shared": False, "snapshots": True, "copy_from_snapshot": True, "granule": 4 * MiB},
    "lvm": {"formats": ["raw"], "shared": False, "snapshots": False, "copy_from_snapshot": False, "granule": 4 * MiB},
    "zfspool": {"formats": ["raw", "subvol"], "shared": False, "snapshots": True, "copy_from_snapshot": False, "granule": 16 * KiB},
    "rbd": {"formats": ["raw"], "shared": True, "snapshots": True, "copy_from_snapshot": True, "granule": 4 * MiB},
    "dir": {"formats": ["raw", "qcow2", "vmdk"], "shared": False, "snapshots": "qcow2", "copy_from_snapshot": "qcow2", "granule": 1},
    "nfs": {"formats": ["raw", "qcow2", "vmdk"], "shared": True, "snapshots": "qcow2", "copy_from_snapshot": "qcow2", "granule": 1},
}


def copy_extents(source_path, target_path):
    """Copies only the data extents of a sparse file into a sparse file of its size."""
    with open(source_path, "rb") as src, open(target_path, "r+b") as dst:
        end = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < end:
            try:
                offset = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            hole = os.lseek(src.fileno(), offset, os.SEEK_HOLE)
            src.seek(offset)
            dst.seek(offset)
            remaining = hole - offset
            while remaining > 0:
                chunk = src.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                dst.write(chunk)
                remaining -= len(chunk)
            offset = hole


def parse_alloc_size(text):
    """`size` of a volume allocation: a bare number is KiB; M and G are binary."""
    number, unit = re.fullmatch(r"(\d+)([MG]?)", text).groups()
    return int(number) * {"": KiB, "M": MiB, "G": GiB}[unit]


def parse_disk_size(text):
    """Sizes in disk options and resize: decimals allowed, K M G T binary, bare = bytes."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text).groups()
    return int(float(number) * {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}[unit])


def format_size(size):
    for unit, factor in (("T", 1024 * GiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


class Volume:
    def __init__(self, storage, name, size, fmt, vmid, path=None):
        self.storage = storage
        self.name = name
        self.size = size
        self.format = fmt
        self.vmid = vmid
        self.ctime = int(time.time())
        self.path = path
        # Storage snapshots of this volume: name -> {"size", "path" (its data then), "ctime"}.
        self.snapshots = {}

    @property
    def volid(self):
        if self.storage.type in ("dir", "nfs"):
            return f"{self.storage.id}:{self.vmid}/{self.name}"
        return f"{self.storage.id}:{self.name}"


class Storage:
    """One pool: a shared storage (node None) or one node's instance of a local one."""

    def __init__(self, id, type, total, node=None, content=("images",), data_dir=None):
        if type not in STORAGE_TYPES:
            raise ValueError(f"unknown storage type {type}")
        self.id = id
        self.type = type
        self.total = total
        self.node = node
        self.content = list(content)
        self.volumes = {}
        self.data_dir = data_dir

    @property
    def rules(self):
        return STORAGE_TYPES[self.type]

    @property
    def shared(self):
        return self.rules["shared"]

    @property
    def used(self):
        return sum(v.size for v in self.volumes.values())

    def on_node(self, node):
        return self.node is None or self.node == node

    def supports_snapshots(self, volume):
        rule = self.rules["snapshots"]
        return rule is True or (rule == "qcow2" and volume.format == "qcow2")

    def can_copy_from_snapshot(self, volume):
        rule = self.rules["copy_from_snapshot"]
        return rule is True or (rule == "qcow2" and volume.format == "qcow2")

    def volume_by_volid_part(self, part):
        """The volume named by what follows `storage:` in a volid."""
        if self.type in ("dir", "nfs"):
            part = part.split("/", 1)[-1]
        return self.volumes.get(part)

    def allocate(self, vmid, name, size, fmt=None):
        """POST .../content: Proxmox's naming rules, formats, duplicates, capacity."""
        if self.type in ("dir", "nfs"):
            found = re.fullmatch(r".+\.(raw|qcow2|vmdk)", name)
            if not found:
                raise PVEError(f"illegal name '{name}' - should be 'vm-{vmid}-*'")
            if fmt and fmt != found.group(1):
                raise PVEError(f"illegal name '{name}' - wrong extension for format ('{found.group(1)} != {fmt}')")
            fmt = found.group(1)
        elif self.type == "lvm":
            if not re.fullmatch(r"vm-\d+-.+", name):
                raise PVEError(f"illegal name '{name}' - should be 'vm-{vmid}-*'")
        else:
            if not re.fullmatch(rf"vm-{vmid}-.+", name):
                raise PVEError(f"illegal name '{name}' - should be 'vm-{vmid}-*'")
        fmt = fmt or "raw"
        if fmt not in self.rules["formats"]:
            raise PVEError(f"unsupported format '{fmt}'")
        if name in self.volumes:
            if self.type in ("dir", "nfs"):
                raise PVEError(f"disk image '/mnt/pve/{self.id}/images/{vmid}/{name}' already exists")
            raise PVEError(f"volume '{self.id}:{name}' already exists")
        granule = self.rules["granule"]
        size = -(-size // granule) * granule
        if size > self.total - self.used:
            raise PVEError(f"not enough free space on storage '{self.id}' "
                           f"(requested {format_size(size)}, available {self.total - self.used} bytes)")
        path = None
        if self.data_dir:
            folder = os.path.join(self.data_dir, self.id if self.node is None else f"{self.node}-{self.id}")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, name)
            with open(path, "wb") as f:
                f.truncate(size)
        volume = Volume(self, name, size, fmt, vmid, path)
        self.volumes[name] = volume
        return volume

    def free(self, volume):
        """vdisk_free: every plugin's free_image takes the volume's snapshots with it
        (LvmThinPlugin lvremove of each snap_<volname>_*, RBDPlugin `rbd snap purge`,
        ZFSPoolPlugin zfs_delete_zvol, a qcow2 file's internal snapshots with the file)."""
        self.volumes.pop(volume.name, None)
        for name in list(volume.snapshots):
            self._drop_snapshot_data(volume, name)
        volume.snapshots.clear()
        if volume.path and os.path.exists(volume.path):
            os.unlink(volume.path)

    def snapshot(self, volume, name):
        """PVE::Storage::volume_snapshot, in constant time on the storage (LvmThinPlugin
        `lvcreate -s -n snap_<volname>_<snap>`, RBDPlugin `rbd snap create`, ZFSPoolPlugin
        `zfs snapshot`, Plugin.pm `qemu-img snapshot -c` for qcow2). Here the data of the
        moment is kept beside the volume's file so a clone of it reads what was there."""
        if not self.supports_snapshots(volume):
            raise PVEError("snapshot feature is not available")
        if name in volume.snapshots:
            raise PVEError(f"snapshot '{name}' already exists on volume '{volume.volid}'")
        path = None
        if volume.path:
            path = f"{volume.path}@{name}"
            with open(path, "wb") as f:
                f.truncate(volume.size)
            copy_extents(volume.path, path)
        volume.snapshots[name] = {"size": volume.size, "path": path, "ctime": int(time.time())}

    def snapshot_delete(self, volume, name):
        """PVE::Storage::volume_snapshot_delete: frees exactly that snapshot."""
        if name in volume.snapshots:
            self._drop_snapshot_data(volume, name)
            del volume.snapshots[name]

    def _drop_snapshot_data(self, volume, name):
        path = volume.snapshots[name].get("path")
        if path and os.path.exists(path):
            os.unlink(path)

    def grow(self, volume, size):
        # QEMU block/qcow2.c qcow2_co_truncate: "Can't resize an image which has snapshots".
        if volume.format == "qcow2" and volume.snapshots:
            raise PVEError(f"qemu-img: Can't resize an image which has snapshots")
        extra = size - volume.size
        if extra > self.total - self.used:
            raise PVEError(f"not enough free space on storage '{self.id}'")
        volume.size = size
        if volume.path:
            with open(volume.path, "r+b") as f:
                f.truncate(size)

    def next_disk_name(self, vmid, fmt="raw"):
        taken = {v.name for v in self.volumes.values()}
        for n in range(1000):
            name = f"vm-{vmid}-disk-{n}" + (f".{fmt}" if self.type in ("dir", "nfs") else "")
            if name not in taken:
                return name
        raise PVEError("unable to allocate an image name")


class VM:
    """A VM's config as qemu-server keeps it: the current values, and a
    [PENDING] section of changes not yet applied to the running VM
    (qemu-server src/PVE/API2/Qemu.pm update_vm writes every change there
    first; src/PVE/QemuServer.pm vmconfig_hotplug_pending applies what it can)."""

    def __init__(self, vmid, node, name, status="stopped", config=None):
        self.vmid = vmid
        self.node = node
        self.status = status
        self.config = {"memory": "2048", "cores": "2", "ostype": "l26",
                       "hotplug": "network,disk,usb", "smbios1": f"uuid={_uuid_for(vmid)}"}
        if name is not None:
            self.config["name"] = name
        self.config.update(config or {})
        self.pending = {}          # key -> value not yet applied
        self.pending_delete = {}   # key -> force, deletes not yet applied
        self.snapshots = {}
        self.config_free_at = 0.0  # when the last queued config change finishes
        self.template = False

    @property
    def name(self):
        """None while a create holds only `lock: create` (qemu-server create_vm
        writes the name with the final config); cluster resources then show none."""
        return self.config.get("name")

    @property
    def lock(self):
        return self.config.get("lock")

    def effective(self):
        """The config with pending changes applied: what GET .../config answers
        unless `current=1` (guest-common load_current_config, called by
        qemu-server API2/Qemu.pm vm_config)."""
        out = dict(self.config)
        out.update(self.pending)
        for key in self.pending_delete:
            out.pop(key, None)
        return out

    def digest(self):
        """SHA1 of the whole config file, [PENDING] section included (the
        digest guest-common's config parser computes over the raw file)."""
        text = "".join(f"{k}: {v}\n" for k, v in sorted(self.config.items()))
        if self.pending or self.pending_delete:
            text += "\n[PENDING]\n" + "".join(f"{k}: {v}\n" for k, v in sorted(self.pending.items()))
            if self.pending_delete:
                text += "delete: " + ",".join(("!" if force else "") + k
                                               for k, force in sorted(self.pending_delete.items())) + "\n"
        return hashlib.sha1(text.encode()).hexdigest()

    def disks(self, values=None):
        """{key: (volid, options)} for every disk and unused entry (of `values`, default the current config)."""
        result = {}
        for key, value in (self.config if values is None else values).items():
            if DISK_KEY.match(key) or UNUSED_KEY.match(key):
                volid, _, options = value.partition(",")
                result[key] = (volid, options)
        return result

    def drive_refs(self):
        """{volid} the VM's drives hold, current or pending (never unusedN:
        an unused entry is a record of ownership, attached to nothing)."""
        refs = set()
        for values in (self.config, self.pending):
            for key, (volid, _) in self.disks(values).items():
                if DISK_KEY.match(key):
                    refs.add(volid)
        return refs

    def hotplug_features(self):
        """qemu-server parse_hotplug_features: '1' is network,disk,usb; '0' none."""
        text = self.config.get("hotplug", "network,disk,usb")
        if text == "1":
            text = "network,disk,usb"
        return set() if text == "0" else set(text.split(","))

    def hotplug_disks(self):
        return self.status == "running" and "disk" in self.hotplug_features()


def _uuid_for(vmid):
    digest = hashlib.md5(f"pvesim-{vmid}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


class Task:
    def __init__(self, node, type, id, user, start, duration, effect):
        self.node = node
        self.type = type
        self.id = str(id)
        self.user = user
        self.start = start
        self.end = start + duration
        self.effect = effect
        self.pid = os.getpid() + Task._counter
        Task._counter += 1
        self.pstart = int(start * 100) & 0xFFFFFFFF
        self.status = "running"
        self.exitstatus = None
        self.upid = (f"UPID:{node}:{self.pid:08X}:{self.pstart:08X}:{int(start):08X}:"
                     f"{type}:{self.id}:{user}:")

    _counter = 1


class Cluster:
    """All state, guarded by one lock; tasks finish lazily, on the next request."""

    def __init__(self, name="sim", nodes=("pve1",), task_seconds=None, default_task_seconds=0.02):
        self.name = name
        self.nodes = list(nodes)
        self.storages = {}  # (id, node) -> Storage; node None for shared storages
        self.vms = {}
        self.tasks = {}
        self.lock = threading.RLock()
        self.task_seconds = dict(task_seconds or {})
        self.default_task_seconds = default_task_seconds
        self.listeners = []  # callables(event, vm, key, volume) for local mode
        self.double_attachments = []  # every time a volume was in two running VMs' drives at once
        self.shared_references = []  # every time a stopped VM's drive named a volume another VM held
        self.in_place_swaps = []  # every write that put a volume into a slot another one held
        # Hot-plug failures to inject: {"vmid"?, "action": "plug"|"unplug", "count"?, "rate"?, "message"?}
        self.hotplug_faults = []
        self.extra_task_seconds = 0.0  # set by a fault rule for the task the current request starts
        # qcow2 snapshots taken while another running VM had the image open (see create_snapshot).
        self.unsafe_snapshots = []
        # pvestatd's round: cluster resources name a VM from the rrd data pvestatd
        # broadcasts every round (pve-manager API2/Cluster.pm resources →
        # PVE::API2Tools::extract_vm_stats: `name` from pve2-vm/<vmid>), not from
        # its config. 0 names every VM as its config does now.
        self.name_round_seconds = 0.0
        self.status_names = {}  # vmid -> name as of the last round; kept after a VM goes, as rrd data is
        self.last_name_round = 0.0

    def resource_name(self, vm):
        """The name cluster resources show for the VM: none for one made since the
        last round, a reused vmid's old name, a renamed VM's previous one."""
        if not self.name_round_seconds:
            return vm.name
        now = time.time()
        if now - self.last_name_round >= self.name_round_seconds:
            self.status_names.update({v.vmid: v.name for v in self.vms.values() if v.name is not None})
            self.last_name_round = now
        return self.status_names.get(vm.vmid)

    # A full copy (import-from, full clone) moves its bytes at this rate unless the task
    # durations say otherwise (`import-per-gib`): 2 s per GiB is 512 MiB/s, an SSD pool's
    # sequential copy (qemu-img convert, which both use); no Proxmox source gives a figure.
    DEFAULT_COPY_SECONDS_PER_GIB = 2.0

    def copy_seconds_per_gib(self):
        return self.task_seconds.get("import-per-gib", self.DEFAULT_COPY_SECONDS_PER_GIB)

    def running_vms_using(self, volume, except_vmid=None):
        return [vm for vm in self.vms.values()
                if vm.vmid != except_vmid and vm.status == "running" and volume.volid in vm.drive_refs()]

    # ---------------------------------------------------------------- tasks

    def start_task(self, node, type, id, user, effect, not_before=None, items=1):
        """`items`: how many things the task does (disks a config change
        hot-plugs); each beyond the first adds `<type>-each` seconds."""
        start = max(time.time(), not_before or 0)
        duration = self.task_seconds.get(type, self.default_task_seconds)
        duration += max(0, items - 1) * self.task_seconds.get(f"{type}-each", 0)
        duration += self.extra_task_seconds
        self.extra_task_seconds = 0.0
        task = Task(node, type, id, user, start, duration, effect)
        self.tasks[task.upid] = task
        return task

    def advance(self):
        """Finishes every task whose time has come, in order of their end."""
        now = time.time()
        for task in sorted((t for t in self.tasks.values() if t.status == "running" and t.end <= now),
                           key=lambda t: t.end):
            try:
                task.effect()
                task.exitstatus = "OK"
            except PVEError as error:
                task.exitstatus = error.message
            except Exception as error:  # a simulator bug must still end the task
                task.exitstatus = f"internal simulator error: {error}"
            task.status = "stopped"

    def wait_for_config_lock(self, vm):
        """Blocks (outside the cluster lock) until the VM's queued config changes
        are done, like Proxmox's flock; gives up after 10 s."""
        deadline = time.time() + LOCK_WAIT_SECONDS
        while True:
            with self.lock:
                self.advance()
                busy = any(t.status == "running" and t.id == str(vm.vmid) and t.type in CONFIG_TASKS
                           for t in self.tasks.values())
                if not busy:
                    return
            if time.time() >= deadline:
                raise PVEError(f"can't lock file '/var/lock/qemu-server/lock-{vm.vmid}.conf' - got timeout")
            time.sleep(0.005)

    # ---------------------------------------------------------------- lookups

    def vm(self, vmid, node=None):
        vm = self.vms.get(int(vmid))
        if vm is None or (node and vm.node != node):
            raise PVEError(f"Configuration file 'nodes/{node or '?'}/qemu-server/{vmid}.conf' does not exist")
        return vm

    def add_storage(self, id, type, total, nodes=None, data_dir=None):
        """A shared type gets one pool; a local type one pool on each of `nodes` (default: all)."""
        if STORAGE_TYPES[type]["shared"]:
            self.storages[(id, None)] = Storage(id, type, total, None, data_dir=data_dir)
        else:
            for node in nodes or self.nodes:
                self.storages[(id, node)] = Storage(id, type, total, node, data_dir=data_dir)

    def storage(self, storage_id, node):
        """The pool `storage_id` names on `node`, as a request to that node sees it."""
        storage = self.storages.get((storage_id, None)) or self.storages.get((storage_id, node))
        if storage is None:
            if any(key[0] == storage_id for key in self.storages):
                raise PVEError(f"storage '{storage_id}' is not available on node '{node}'")
            raise PVEError(f"storage '{storage_id}' does not exist")
        return storage

    def storages_on(self, node):
        return [s for s in self.storages.values() if s.on_node(node)]

    def volume(self, volid, node):
        storage_id, _, rest = volid.partition(":")
        storage = self.storage(storage_id, node)
        volume = storage.volume_by_volid_part(rest)
        if volume is None:
            raise PVEError(f"volume '{volid}' does not exist")
        return volume

    def next_vmid(self):
        vmid = 100
        while vmid in self.vms:
            vmid += 1
        return vmid

    def users_of(self, volume):
        """(vmid, key) for every VM config that references the volume."""
        return [(vm.vmid, key) for vm in self.vms.values() if volume.storage.on_node(vm.node)
                for key, (ref, _) in vm.disks().items() if ref == volume.volid]

    def drive_holders(self, volid):
        """vmids whose drives hold `volid`, in the current config or pending."""
        return sorted(vm.vmid for vm in self.vms.values() if volid in vm.drive_refs())

    def record_if_doubly_attached(self, volid):
        """Two QEMU processes writing one volume is the harm: a volume in the drives of two
        VMs of which at least two run. qemu-server lets any number of configs name a volume;
        a stopped VM's drive is a reference (a VM snapshot needs one), kept apart as such."""
        holders = self.drive_holders(volid)
        if len(holders) > 1:
            running = [vmid for vmid in holders if self.vms[vmid].status == "running"]
            if len(running) > 1:
                self.double_attachments.append({"volume": volid, "vms": holders})
            else:
                self.shared_references.append({"volume": volid, "vms": holders, "running": running})

    def hotplug_fault(self, vm, action):
        """The message of an injected hot-plug failure for this VM, if one fires."""
        import random
        for rule in self.hotplug_faults:
            if rule.get("action", action) != action or rule.get("vmid", vm.vmid) != vm.vmid:
                continue
            if rule.get("remaining") == 0 or random.random() >= rule.get("rate", 1.0):
                continue
            if "remaining" in rule:
                rule["remaining"] -= 1
            return rule.get("message", "VM %d qmp command 'device_del' failed - timeout" % vm.vmid
                            if action == "unplug" else "VM %d qmp command 'device_add' failed" % vm.vmid)
        return None

    def migrate(self, vmid, target):
        """An offline or online migration as qemu-server QemuMigrate ends it: the
        config moves to the target node's directory, so requests naming the old
        node answer "Configuration file ... does not exist"; volumes on local
        storage move to the target's pool of the same storage id."""
        vm = self.vm(vmid)
        if target not in self.nodes:
            raise PVEError(f"no such cluster node '{target}'", 400)
        for volid in {ref for ref, _ in vm.disks().values()} | vm.drive_refs():
            storage_id, _, part = volid.partition(":")
            source = self.storages.get((storage_id, vm.node))
            destination = self.storages.get((storage_id, target))
            if source is None or destination is None:
                continue  # shared, or not there
            volume = source.volume_by_volid_part(part)
            if volume is not None:
                del source.volumes[volume.name]
                volume.storage = destination
                destination.volumes[volume.name] = volume
        vm.node = target

    def notify(self, event, vm, key, volume):
        for listener in self.listeners:
            listener(event, vm, key, volume)


CONFIG_TASKS = {"qmconfig", "resize", "qmmove", "qmsnapshot", "qmdelsnapshot", "qmclone", "qmdestroy"}


def decode_serial(options):
    for part in options.split(","):
        if part.startswith("serial="):
            return urllib.parse.unquote(part[len("serial="):])
    return None
