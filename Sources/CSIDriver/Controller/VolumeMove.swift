import CSIProto
import FoundationEssentials
import ProxmoxAPI
import ProxmoxDomain
import UnaryGRPC

/// Moves a detached volume on local storage (lvmthin, zfspool, lvm, dir) to
/// another Proxmox node of its cluster with an API token, no root@pam.
///
/// Proxmox moves a volume between nodes only as part of a VM's offline
/// migration, and only volumes the VM owns (qemu-server QemuMigrate.pm
/// scan_local_volumes dies "owned by other VM"); a driver volume is owned by
/// the owner vmid, which no VM may have (destroying such a VM frees every
/// volume it owns). So the volume is first copied into a record VM of the
/// driver's on its node (CreateVolume from the volume: `import-from`, the VM
/// owns the copy), that stopped VM is migrated (POST …/migrate, VM.Migrate;
/// sync_offline_local_volumes copies its unused disk to the same storage on
/// the target, renaming it if the name is taken there), and the original is
/// deleted last. A volume a record VM owns already (restored or cloned) is
/// moved by migrating that VM, without a copy. Each step is found again from Proxmox alone (the record VM is
/// named after the move), so a rerun after a crash at any point goes on from
/// there, and the data is never in no place.
public struct VolumeMove: Sendable {
    public let volumeID: String
    public let target: String

    public init(volumeID: String, target: String) {
        (self.volumeID, self.target) = (volumeID, target)
    }

    /// The CSI name of the copy: one per volume and target, the same on every rerun.
    var copyName: String { "move-\(sha256Hex(volumeID).prefix(24))-to-\(target)" }

    /// Where a move stands, as Proxmox shows it.
    public enum Stage: Sendable, Equatable {
        /// Nothing done yet: the volume is copied into a record VM on its node first.
        case copy(from: String, storage: String, bytes: Int64)
        /// The copy is being made (an import task runs).
        case copying(vm: Int)
        /// The copy is made; its record VM migrates to the target next (or is migrating).
        case migrate(vm: Int, from: String, migrating: Bool)
        /// On the target as `newID`; the original is deleted last (if it is still there).
        case deleteOriginal(newID: String)
        case done(newID: String)
    }
}

extension ControllerService {
    /// Where the move stands, changing nothing; refuses a move that cannot be made.
    public func stage(of move: VolumeMove) async throws -> VolumeMove.Stage {
        let what = "moving \(move.volumeID) to \(move.target)"
        do {
            guard let handle = try? VolumeHandle(parsing: move.volumeID) else {
                throw RPCError(.invalidArgument, "\(what): \"\(move.volumeID)\" is not a proxmox-csi volume id")
            }
            // One listing of the VMs as configured for both lookups: the move's copy VM, the volume's record VM.
            let listed = try await volumes.vmsAsConfigured(handle.cluster)
            if let copy = try await volumes.copyVM(.volume, csiName: move.copyName, among: listed) {
                guard copy.source == move.volumeID else {
                    throw RPCError(.alreadyExists, "\(what): its record VM \(copy.vm.vmid) holds a copy of \(copy.source)")
                }
                if copy.vm.node == move.target, copy.settled, let volid = copy.volid {
                    let moved = VolumeHandle(cluster: handle.cluster, node: move.target, storage: handle.storage,
                                             volume: Volid.volumeName(of: volid)).description
                    // One kept only for its native snapshots is gone to the CO (it goes with its last snapshot).
                    return try await liveVolume(move.volumeID) == nil ? .done(newID: moved) : .deleteOriginal(newID: moved)
                }
                if copy.vm.node == move.target || copy.settled || copy.vm.node != handle.node {
                    return .migrate(vm: copy.vm.vmid, from: copy.vm.node, migrating: copy.copying)
                }
                return .copying(vm: copy.vm.vmid)
            }
            // A restored or cloned volume is its record VM's own: that VM migrates with it, no copy.
            let record = try await recordVM(of: handle, among: listed)
            if let record, record.settled, record.vm.node == move.target, let volid = record.volid {
                return .done(newID: VolumeHandle(cluster: handle.cluster, node: move.target, storage: handle.storage,
                                                 volume: Volid.volumeName(of: volid)).description)
            }
            guard let (found, storage, size) = try await liveVolume(move.volumeID) else {
                throw RPCError(.notFound, "\(what): the volume does not exist")
            }
            guard !storage.shared else {
                throw RPCError(.failedPrecondition, "\(what): it is on shared storage \(storage.id), which every node reaches already")
            }
            guard let from = found.node, from != move.target else {
                throw RPCError(.alreadyExists, "\(what): it is on \(move.target) already")
            }
            guard storage.available[move.target] != nil else {
                throw RPCError(.failedPrecondition, "\(what): storage \(storage.id) is not available on node \(move.target)")
            }
            let users = try await volumes.attachments(of: found, storage: storage).filter { !ProxmoxVolumes.isHolder($0.0) }
            if let (vm, key) = users.first {
                throw RPCError(.failedPrecondition, "\(what): it is attached to VM \(vm.vmid) (\(vm.name)) as \(key); "
                    + "a volume moves only while no VM uses it")
            }
            if let record, record.settled {
                return .migrate(vm: record.vm.vmid, from: record.vm.node, migrating: record.copying)
            }
            return .copy(from: from, storage: storage.id, bytes: size)
        } catch {
            throw rpcError(error, what)
        }
    }

    /// Runs the move from wherever it stands to its end (with `keepOriginal`, to just before the
    /// original is deleted: Kubernetes follows first); `progress` hears of each step as it starts.
    /// Returns the volume's new id.
    public func run(_ move: VolumeMove, timeout: Double, keepOriginal: Bool = false,
                    progress: @Sendable (String) -> Void) async throws -> String {
        let deadline = ContinuousClock.now + .seconds(timeout)
        while true {
            guard ContinuousClock.now < deadline else {
                throw RPCError(.deadlineExceeded, "moving \(move.volumeID) to \(move.target): not done within \(Int(timeout)) s; run it again to go on")
            }
            switch try await stage(of: move) {
            case let .copy(from, storage, bytes):
                progress("copy: \(move.volumeID) into a record VM on \(from) (\(bytes) bytes on \(storage))")
                try await startCopy(move, storage: storage, bytes: bytes)
            case let .copying(vm):
                progress("copying: waiting for the copy into VM \(vm)")
                // The same size as the first ask: a smaller one would grow the copy to the default.
                try await startCopy(move, storage: nil, bytes: liveVolume(move.volumeID)?.size ?? 0)
            case let .migrate(vm, from, migrating):
                progress(migrating ? "migrating: waiting for VM \(vm) to reach \(move.target)"
                                   : "migrate: VM \(vm) from \(from) to \(move.target)")
                try await migrate(vm: vm, from: from, to: move.target, cluster: VolumeHandle(parsing: move.volumeID).cluster,
                                  started: migrating, deadline: deadline)
            case let .deleteOriginal(newID):
                if keepOriginal { return newID }
                progress("delete: the original \(move.volumeID) (the volume is \(newID) now)")
                try await carryOptions(from: move.volumeID, to: newID, node: move.target)
                _ = try await deleteVolume(.with { $0.volumeID = move.volumeID })
            case let .done(newID):
                progress("done: \(newID)")
                return newID
            }
        }
    }

    /// Options ControllerModifyVolume recorded for the volume (by its id) apply to it under its new id.
    private func carryOptions(from original: String, to moved: String, node: String) async throws {
        let cluster = try VolumeHandle(parsing: original).cluster
        guard let recorded = try await volumes.copyVM(.options, csiName: original, cluster: cluster), !recorded.options.isEmpty else { return }
        try await volumes.recordOptions(recorded.options, volumeID: moved, cluster: cluster, node: node)
    }

    /// CreateVolume from the volume, into the move's record VM; it answers
    /// UNAVAILABLE while Proxmox copies, and is asked again until the copy is made.
    private func startCopy(_ move: VolumeMove, storage: String?, bytes: Int64) async throws {
        let handle = try VolumeHandle(parsing: move.volumeID)
        var parameters = ["storage": storage ?? handle.storage]
        // A file storage keeps the image's format (pve-storage names carry it: .raw, .qcow2).
        if let format = ["raw", "qcow2"].first(where: { handle.fileName.hasSuffix("." + $0) }) { parameters["storageFormat"] = format }
        do {
            _ = try await createVolume(.with {
                $0.name = move.copyName
                $0.capacityRange.requiredBytes = bytes
                $0.parameters = parameters
                $0.volumeCapabilities = [.with { $0.block = .init(); $0.accessMode.mode = .singleNodeWriter }]
                $0.volumeContentSource.volume.volumeID = move.volumeID
            })
        } catch let error as RPCError where error.code == .unavailable {
            try await Task.sleep(for: .seconds(2))
        }
    }

    /// Migrates the stopped record VM, or waits for the migration a killed run started.
    private func migrate(vm vmid: Int, from node: String, to target: String, cluster: String, started: Bool,
                         deadline: ContinuousClock.Instant) async throws {
        let client = try volumes.client(cluster)
        // The next step looks the VM up on its new node: cached resources still have it on the old one.
        defer { volumes.invalidate(cluster) }
        let left = max(1, Double(ContinuousClock.now.duration(to: deadline).components.seconds))
        if started || node == target {
            // The lock outlives the run that asked; the task is Proxmox's and goes on.
            if let upid = try await client.activeTasks(node: node, vmid: vmid).first {
                _ = try await client.waitForTask(upid, timeout: left, maxPollInterval: 5)
            } else {
                try await Task.sleep(for: .seconds(2))
            }
            return
        }
        guard let upid = try await client.startMigrate(node: node, vmid: vmid, target: target) else { return }
        _ = try await client.waitForTask(upid, timeout: left, maxPollInterval: 5)
    }
}
