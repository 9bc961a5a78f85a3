import FoundationEssentials
import ProxmoxAPI
import TextSupport

/// Storage-native snapshots. Proxmox snapshots a volume only as part of a VM
/// snapshot: guest-common AbstractConfig snapshot_create takes
/// PVE::Storage::volume_snapshot of every drive of the VM (an lvmthin thin
/// snapshot, `rbd snap create`: constant time, one instant). So each source
/// volume gets a stopped VM of the driver's, `csi-src-<hash of the volume id>`,
/// that names the volume as its scsi0 only while a snapshot is taken (the
/// snapshot's own config section keeps naming it), and each CSI snapshot is one
/// of its VM snapshots. A restore is a full clone of that VM snapshot
/// (clone_vm with `snapname`), made straight into the record VM the restored
/// volume belongs to.
///
/// What the volume's storage costs it is in `NativeSnapshotSupport`; the rest
/// keep full copies (CopyVMs.swift).
public struct SourceVM: Sendable, Equatable {
    public var vm: VMRef
    /// The CSI id of the volume it snapshots, and its Proxmox volid.
    public var source: String
    public var volid: String
    /// Set when DeleteVolume came while snapshots still needed the data: the
    /// volume is freed with the last of them.
    public var deleted: Bool
    /// A drive left by a snapshot that stopped half-way (removed before the next).
    public var leftoverDrive: Bool

    package static let prefix = "csi-src-"

    package static func vmName(source: String) -> String { prefix + String(sha256Hex(source).prefix(24)) }

    package static func description(source: String, volid: String, deleted: Bool) -> String {
        "proxmox-csi snapshot source\nsource: \(source)\nvolid: \(volid)\n" + (deleted ? "deleted: yes\n" : "")
            + "Managed by proxmox-csi: do not start or edit."
    }

    package static func parse(_ vm: VMRef, config: VMConfig) -> SourceVM? {
        guard vm.name.hasPrefix(prefix), let text = config["description"] else { return nil }
        let fields = DescriptionFields(text)
        guard let source = fields["source"], let volid = fields["volid"], vmName(source: source) == vm.name else { return nil }
        return SourceVM(vm: vm, source: source, volid: volid, deleted: fields["deleted"] == "yes", leftoverDrive: config["scsi0"] != nil)
    }
}

/// One CSI snapshot taken natively: a VM snapshot of a source VM.
public struct NativeSnapshot: Sendable, Equatable {
    public var source: SourceVM
    /// The VM snapshot's name (pve-configid, at most 40 characters).
    public var snapname: String
    public var csiName: String
    public var createdAt: Int64
    /// The source's size when it was taken.
    public var bytes: Int64

    package static func snapname(csiName: String) -> String { "csi" + String(sha256Hex(csiName).prefix(32)) }

    /// `<cluster>/<source vmid>/csi<32 hex>`: three parts as a copy snapshot's id, told apart by its last.
    public var id: String { "\(source.vm.cluster)/\(source.vm.vmid)/\(snapname)" }

    /// `csi` and 32 lowercase hex digits.
    package static func isSnapname(_ text: String) -> Bool {
        text.hasPrefix("csi") && text.utf8.count == 35 && text.utf8.dropFirst(3).allSatisfy(ASCII.isLowerHex)
    }
}

/// Which storages take a snapshot natively and can copy a new volume from it
/// (pve-storage volume_has_feature 'snapshot' and 'copy' with a snapshot name):
/// lvmthin and rbd both; qcow2 files too, but `qemu-img snapshot` of an image a
/// running QEMU has open is not safe, so only while detached; zfspool snapshots
/// but cannot copy from one (ZFSPoolPlugin: copy has no `snap`), so a restore
/// would be impossible: it keeps full copies, as lvm thick, raw files and the rest.
package enum NativeSnapshotSupport {
    package static func available(storageType: String, volumeName: String, attached: Bool) -> Bool {
        switch storageType {
        case "lvmthin", "rbd": true
        case "dir", "nfs": volumeName.hasSuffix(".qcow2") && !attached
        default: false
        }
    }
}

/// `key: value` lines of a description.
struct DescriptionFields {
    private var fields: [String: String] = [:]

    init(_ text: String) {
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = parts[1].trimmed() }
        }
    }

    subscript(key: String) -> String? { fields[key] }
}

extension ProxmoxVolumes {
    package static func isSourceVM(_ vm: VMRef) -> Bool { vm.name.hasPrefix(SourceVM.prefix) }

    /// The source VM of a volume, if it has one.
    package func sourceVM(of volumeID: String, cluster: String, among listed: [VMRef]? = nil) async throws -> SourceVM? {
        let name = SourceVM.vmName(source: volumeID)
        let candidates = if let listed { listed } else { try await vmsAsConfigured(cluster) }
        guard let (vm, config) = try await firstConfig(named: name, among: candidates) else { return nil }
        return SourceVM.parse(vm, config: config)
    }

    package func sourceVM(_ vm: VMRef) async throws -> SourceVM? {
        do {
            return SourceVM.parse(vm, config: try await client(vm.cluster).vmConfig(node: vm.node, vmid: vm.vmid))
        } catch ProxmoxError.notFound {
            return nil
        }
    }

    /// The native snapshots of one source VM.
    package func nativeSnapshots(of source: SourceVM) async throws -> [NativeSnapshot] {
        try await client(source.vm.cluster).snapshots(node: source.vm.node, vmid: source.vm.vmid).compactMap { snapshot in
            let fields = DescriptionFields(snapshot.description)
            guard NativeSnapshot.isSnapname(snapshot.name), let name = fields["name"],
                  NativeSnapshot.snapname(csiName: name) == snapshot.name else { return nil }
            return NativeSnapshot(source: source, snapname: snapshot.name, csiName: name,
                                  createdAt: Int64(fields["created"] ?? "") ?? snapshot.time ?? 0, bytes: Int64(fields["size"] ?? "") ?? 0)
        }
    }

    /// Every native snapshot, each source VM's list read at most `scanSeconds` ago and never
    /// before the driver's own last snapshot change on it: CreateSnapshot's check that no other
    /// volume has a snapshot of the name (it rereads a match before refusing). Reading every
    /// source VM for every snapshot made a burst of N snapshots cost N² reads.
    package func recentNativeSnapshots() async throws -> [NativeSnapshot] {
        var out: [NativeSnapshot] = []
        for cluster in clusterNames {
            for vm in try await vmsByCurrentNames(cluster, fresh: false) where Self.isSourceVM(vm) {
                let key = "\(vm.key)/\(vm.name)"
                let now = ProcessInfo.processInfo.systemUptime
                let (cached, changes) = snapshotScans.withLock { ($0.lists[key], $0.changes[key] ?? 0) }
                if let cached, now - cached.at < scanSeconds {
                    out += cached.snapshots
                    continue
                }
                guard let source = try await sourceVM(vm) else { continue }
                let snapshots = try await nativeSnapshots(of: source)
                snapshotScans.withLock { if $0.changes[key] ?? 0 == changes { $0.lists[key] = (now, snapshots) } }
                out += snapshots
            }
        }
        return out
    }

    /// Forgets what the name check read of the source VM's snapshots: the driver just changed them.
    func snapshotsChanged(_ vm: VMRef) {
        let key = "\(vm.key)/\(vm.name)"
        snapshotScans.withLock {
            $0.lists[key] = nil
            $0.changes[key, default: 0] &+= 1
        }
    }

    /// Every native snapshot, in every cluster.
    package func nativeSnapshots() async throws -> [NativeSnapshot] {
        var out: [NativeSnapshot] = []
        for cluster in clusterNames {
            for vm in try await vmsByCurrentNames(cluster) where Self.isSourceVM(vm) {
                if let source = try await sourceVM(vm) { out += try await nativeSnapshots(of: source) }
            }
        }
        return out
    }

    /// The native snapshot an id names; nil when it names none.
    package func nativeSnapshot(_ id: String) async throws -> NativeSnapshot? {
        guard let (vm, snapname) = try await sourceVMRef(ofSnapshotID: id), let source = try await sourceVM(vm) else { return nil }
        return try await nativeSnapshots(of: source).first { $0.snapname == snapname }
    }

    /// The source VM and the VM snapshot's name a native snapshot id names; nil when it names no source VM.
    private func sourceVMRef(ofSnapshotID id: String) async throws -> (VMRef, String)? {
        let parts = id.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, clusterNames.contains(parts[0]), let vmid = Int(parts[1]), NativeSnapshot.isSnapname(parts[2]),
              // By current names: resources name a VM only after pvestatd's next round.
              let vm = try await vmsByCurrentNames(parts[0]).first(where: { $0.vmid == vmid && Self.isSourceVM($0) })
        else { return nil }
        return (vm, parts[2])
    }

    /// Takes the snapshot `csiName` of the volume (or finds it taken): the
    /// volume named as the source VM's scsi0 for the VM snapshot, then not.
    package func takeNativeSnapshot(_ csiName: String, of volumeID: String, volid: String, bytes: Int64, cluster: String,
                                    node: String) async throws -> NativeSnapshot {
        let client = try client(cluster)
        let name = SourceVM.vmName(source: volumeID)
        return try await vmLocks.run("\(cluster)/source/\(name)") {
            let source: SourceVM
            if let found = try await self.sourceVM(of: volumeID, cluster: cluster) {
                source = found
                if let taken = try await self.nativeSnapshots(of: source).first(where: { $0.csiName == csiName }) {
                    if source.leftoverDrive { try await client.updateVMConfig(node: source.vm.node, vmid: source.vm.vmid, delete: ["scsi0"]) }
                    return taken
                }
                // A stopped VM takes the change at once.
                try await client.updateVMConfig(node: source.vm.node, vmid: source.vm.vmid, set: [("scsi0", volid)])
            } else {
                // Made naming the volume already, and with no snapshot yet to look for: a
                // crash before the snapshot leaves the drive, which the next try finds (leftoverDrive).
                try await self.requireNoUnnamedCreation(cluster, mayBe: name)
                let vmid = try await self.createVM(cluster: cluster, node: node, name: name,
                                                   description: SourceVM.description(source: volumeID, volid: volid, deleted: false),
                                                   disks: [("scsi0", volid)], what: "the snapshot source VM of \(volumeID)")
                source = SourceVM(vm: VMRef(cluster: cluster, node: node, vmid: vmid, name: name), source: volumeID, volid: volid,
                                  deleted: false, leftoverDrive: true)
            }
            let vm = source.vm
            let createdAt = Int64(Date().timeIntervalSince1970)
            // Not owning the volume, removing the drive afterwards frees nothing
            // (qemu-server vmconfig_register_unused_drive registers only owned volumes).
            defer { self.snapshotsChanged(vm) }
            do {
                try await client.createSnapshot(node: vm.node, vmid: vm.vmid, name: NativeSnapshot.snapname(csiName: csiName),
                                                description: "name: \(csiName)\ncreated: \(createdAt)\nsize: \(bytes)\n")
            } catch {
                try? await client.updateVMConfig(node: vm.node, vmid: vm.vmid, delete: ["scsi0"])
                throw error
            }
            try await client.updateVMConfig(node: vm.node, vmid: vm.vmid, delete: ["scsi0"])
            self.invalidate(cluster)
            return NativeSnapshot(source: SourceVM(vm: vm, source: volumeID, volid: volid, deleted: source.deleted, leftoverDrive: false),
                                  snapname: NativeSnapshot.snapname(csiName: csiName), csiName: csiName, createdAt: createdAt, bytes: bytes)
        }
    }

    /// Deletes the native snapshot an id names (its storage snapshot goes with it);
    /// false when the id names no source VM. The last snapshot of a volume
    /// DeleteVolume already came for frees the volume, then the source VM goes.
    /// The source VM's config and snapshots are read once, under its lock, where
    /// no other snapshot change of this driver's can come between.
    package func deleteNativeSnapshot(id: String) async throws -> Bool {
        guard let (vm, snapname) = try await sourceVMRef(ofSnapshotID: id) else { return false }
        let client = try client(vm.cluster)
        return try await vmLocks.run("\(vm.cluster)/source/\(vm.name)") {
            guard let source = try await self.sourceVM(vm) else { return false }
            defer { self.snapshotsChanged(vm) }
            var remaining = try await client.snapshots(node: vm.node, vmid: vm.vmid)
            if remaining.contains(where: { $0.name == snapname }) {
                do {
                    try await client.deleteSnapshot(node: vm.node, vmid: vm.vmid, name: snapname)
                } catch ProxmoxError.notFound {
                    // Already gone.
                }
                remaining.removeAll { $0.name == snapname }
            }
            if remaining.isEmpty { try await self.retire(source) }
            return true
        }
    }

    /// A volume with native snapshots is kept for them: marked deleted, freed with the
    /// last snapshot (every plugin's free_image takes a volume's snapshots with it).
    /// True when the volume was kept; false when it has no snapshots (the caller frees it).
    package func keepForSnapshots(_ volumeID: String, cluster: String, among listed: [VMRef]? = nil) async throws -> Bool {
        guard let source = try await sourceVM(of: volumeID, cluster: cluster, among: listed) else { return false }
        let client = try client(cluster)
        return try await vmLocks.run("\(cluster)/source/\(source.vm.name)") {
            if try await self.nativeSnapshots(of: source).isEmpty {
                try await self.retireSourceVMIfUnused(source)
                return false
            }
            if !source.deleted {
                try await client.updateVMConfigSync(node: source.vm.node, vmid: source.vm.vmid, set: [
                    ("description", SourceVM.description(source: source.source, volid: source.volid, deleted: true)),
                ])
            }
            return true
        }
    }

    /// Whether DeleteVolume already came for the volume (kept only for its snapshots).
    package func isKeptForSnapshots(_ volumeID: String, cluster: String) async throws -> Bool {
        try await sourceVM(of: volumeID, cluster: cluster)?.deleted ?? false
    }

    /// Without snapshots a source VM has no job: it goes, and with it the volume DeleteVolume came for.
    private func retireSourceVMIfUnused(_ source: SourceVM) async throws {
        let client = try client(source.vm.cluster)
        guard try await client.snapshots(node: source.vm.node, vmid: source.vm.vmid).isEmpty,
              let fresh = try await sourceVM(source.vm) else { return }
        try await retire(fresh)
    }

    /// Frees the volume of a source VM that has no snapshots left, when DeleteVolume
    /// came for it (`source` read under the source VM's lock), and destroys the VM.
    private func retire(_ source: SourceVM) async throws {
        let client = try client(source.vm.cluster)
        if source.deleted {
            let storage = Volid.storage(of: source.volid)
            do {
                try await client.deleteVolume(node: source.vm.node, storage: storage, volid: source.volid)
            } catch ProxmoxError.notFound {
                // Already gone.
            }
        }
        do {
            // The volume is not the VM's own: destroy_vm leaves it (and it holds no snapshot of it any more).
            defer { self.forgetName(cluster: source.vm.cluster, vmid: source.vm.vmid) }
            try await client.destroyVM(node: source.vm.node, vmid: source.vm.vmid, timeout: taskTimeout)
        } catch ProxmoxError.notFound {
            // Already gone.
        }
        invalidate(source.vm.cluster)
    }

    /// A volume restored from a native snapshot: a full clone of the VM snapshot,
    /// made as the record VM (`csi-vol-<hash>`, the CopyVM description) and settled
    /// as CopyVMs settles an import. Waits up to `wait`; a clone still copying is
    /// answered with `copying` (the clone has no name until its copy ends).
    package func restoreNative(_ snapshot: NativeSnapshot, csiName: String, storage: String?, bytes: Int64?,
                               wait: Double) async throws -> CopyVM {
        let cluster = snapshot.source.vm.cluster
        let client = try client(cluster)
        let name = CopyVM.vmName(.volume, csiName: csiName)
        return try await vmLocks.run("\(cluster)/copy/\(name)") {
            if let found = try await self.copyVM(.volume, csiName: csiName, cluster: cluster) {
                guard found.source == snapshot.id, !found.copying, !found.settled else { return found }
                return try await self.settle(found, bytes: bytes)
            }
            try await self.requireNoUnnamedCreation(cluster, mayBe: name)
            let source = snapshot.source.vm
            let description = CopyVM.description(.volume, csiName: csiName, source: snapshot.id, createdAt: Int64(Date().timeIntervalSince1970))
            let (vmid, upid) = try await self.vmLocks.run("\(cluster)/new-vmid") {
                let vmid = try await client.nextVMID()
                self.forgetName(cluster: cluster, vmid: vmid)
                self.creating.withLock { _ = $0.insert("\(cluster)/\(vmid)") }
                do {
                    let upid = try await client.startClone(node: source.node, vmid: source.vmid, newID: vmid, name: name,
                                                           description: description, snapshot: snapshot.snapname, storage: storage)
                    return (vmid, upid)
                } catch {
                    self.creating.withLock { _ = $0.remove("\(cluster)/\(vmid)") }
                    throw error
                }
            }
            defer { self.creating.withLock { _ = $0.remove("\(cluster)/\(vmid)") } }
            if let upid {
                do {
                    _ = try await client.waitForTask(upid, timeout: wait, maxPollInterval: 2)
                } catch ProxmoxError.taskTimedOut {
                    _ = try await client.waitForTask(upid, timeout: self.taskTimeout, maxPollInterval: 2)
                }
            }
            self.invalidate(cluster)
            guard let made = try await self.copyVM(VMRef(cluster: cluster, node: source.node, vmid: vmid, name: name)) else {
                throw DomainError.inconsistent("the clone \(vmid) of snapshot \(snapshot.id) for \(csiName) did not appear")
            }
            return try await self.settle(made, bytes: bytes)
        }
    }
}
