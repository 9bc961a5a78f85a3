import FoundationEssentials
import ProxmoxAPI
import Synchronization

/// A VM's config as a batch changes it: what the config held when read
/// (current values and pending additions, `VMConfig.held`), and the values
/// with the edits so far applied.
package struct ConfigDraft {
    /// The config as read, with its pending changes.
    package let config: VMConfig
    package let read: [String: String]
    package var values: [String: String]
    /// Keys whose pending change is dropped (`revert`): a detach left pending
    /// that a new attach of the same volume cancels.
    package var revert: Set<String> = []
    /// Keys to send again although their value is unchanged: qemu-server's
    /// update_vm marks a key it is sent as modified even when the value equals
    /// its pending one, so its hot-plug is tried again (a plug that failed).
    package var resend: Set<String> = []

    package init(config: VMConfig) {
        self.config = config
        read = config.held
        values = read
    }

    /// Whether a new disk may go to `key`: free now, and free when the batch
    /// began. A slot a detach in this batch frees is taken only by a later
    /// write: one write that swapped a disk in place would have Proxmox unplug
    /// one volume and plug another into the same device.
    package func isFree(_ key: String) -> Bool { values[key] == nil && read[key] == nil }

    /// Whether an edit earlier in this batch freed `key`: free for the next write.
    package func isFreedInThisBatch(_ key: String) -> Bool { values[key] == nil && read[key] != nil }

    /// The config as a successful write of this draft leaves it, when that is
    /// certain without reading it again; nil when it is not.
    ///
    /// qemu-server's update_vm_api (API2/Qemu.pm, `$updatefn`) hot-plugs each
    /// key the write modified (QemuServer.pm vmconfig_hotplug_pending, or
    /// vmconfig_apply_pending for a stopped VM) and raises every hot-plug error
    /// at the end (`raise_param_exc($errors)`), which fails the write. A key is
    /// left pending without an error only when it is skipped (`die "skip\n"`):
    /// for a disk, when the VM's hotplug option leaves out disk
    /// (vmconfig_update_disk, and the delete branch of vmconfig_hotplug_pending).
    /// So with disk hot-plug on, a write that succeeded made every disk it
    /// added current and removed every disk it deleted. Not modelled, and so
    /// read again: a changed option of a disk already there (vmconfig_update_disk
    /// skips what it cannot change live), any key but a disk's, and detaching a
    /// volume the VM itself owns, which becomes `unusedN`
    /// (vmconfig_delete_or_detach_drive → vmconfig_register_unused_drive).
    package func written(set: [(String, String)], delete: [String], revert: [String], vmid: Int) -> VMConfig? {
        guard config.hotplugWithoutDisk == nil,
              (set.map(\.0) + delete + revert).allSatisfy(ProxmoxVolumes.isDiskKey),
              set.allSatisfy({ config.values[$0.0] == nil }) else { return nil }
        let ownPrefixes = ["vm-\(vmid)-", "base-\(vmid)-"]
        for key in delete {
            let volume = Volid.volumeName(of: ProxmoxVolumes.volid(of: config.held[key] ?? ""))
            if ownPrefixes.contains(where: volume.hasPrefix) { return nil }
        }
        var after = config
        after.digest = ""  // a hash of the file Proxmox wrote: unknown until read
        for (key, value) in set {
            after.values[key] = value
            after.pending[key] = nil
            after.pendingDelete.remove(key)
        }
        for key in delete { after.values[key] = nil }
        for key in delete + revert {
            after.pending[key] = nil
            after.pendingDelete.remove(key)
        }
        return after
    }
}

/// What a batch did to a VM: the VM as written to (on its new node if it
/// migrated meanwhile) and its config as the write left it, when certain
/// (`ConfigDraft.written`); nil asks the caller to read it.
package struct ConfigOutcome: Sendable {
    package var vm: VMRef
    package var config: VMConfig?
}

/// One caller's change to a VM's config, made on the batch's draft. It throws
/// to refuse (a volume attached read-only, no free slot): its caller gets the
/// error and the rest of the batch goes on without it. It throws
/// `ConfigBatches.NextWrite` to go in the next write instead (it needs a slot
/// this batch frees).
package typealias ConfigEdit = @Sendable (inout ConfigDraft) throws -> Void

/// Merges concurrent edits of one VM's config into one write. Every write is
/// a Proxmox task that takes the VM's config lock and hot-plugs what changed,
/// so writes to one VM run one after another however many callers wait; edits
/// that arrive while a write runs go together in the next one. Forty pods'
/// volumes landing on one node are then a handful of tasks, not forty.
package final class ConfigBatches: Sendable {
    private struct Waiting {
        let edit: ConfigEdit
        let continuation: CheckedContinuation<ConfigOutcome, any Error>

        func resume(_ result: Result<ConfigOutcome, any Error>) { continuation.resume(with: result) }
    }

    /// Edits not yet written, per VM. A key is present while a writer runs for
    /// that VM; the caller that adds the key starts the writer.
    private let queued = Mutex<[String: [Waiting]]>([:])
    /// How often a write is redone when the config changed under it.
    package static let attempts = 5
    /// A batch's first attempt decides on a config read this recently (a detach
    /// right after the scan that found the disk) instead of reading it again.
    /// The write carries that read's digest, and qemu-server refuses a write whose
    /// digest is not the file's (API2/Qemu.pm update_vm_api, `$load_and_check_config`:
    /// "checksum mismatch"), so a config changed meanwhile costs a retry on a fresh read, never a wrong write.
    static let recentReadSeconds = 2.0

    /// Thrown by an edit that can be made once this batch's write is done.
    package struct NextWrite: Error {}

    /// Applies `edit` to the VM's config, together with whatever other edits
    /// are waiting, and returns once the write that carried it is done.
    package func apply(_ vm: VMRef, in volumes: ProxmoxVolumes, _ edit: @escaping ConfigEdit) async throws -> ConfigOutcome {
        let key = vm.key
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ConfigOutcome, any Error>) in
            let startsWriter = queued.withLock { queues in
                defer { queues[key, default: []].append(Waiting(edit: edit, continuation: continuation)) }
                return queues[key] == nil
            }
            if startsWriter { Task { await self.writeBatches(vm, key: key, in: volumes) } }
        }
    }

    private func writeBatches(_ first: VMRef, key: String, in volumes: ProxmoxVolumes) async {
        var vm = first
        while true {
            // The batch is whatever waits once the VM is free (a resize may hold it).
            let target = vm
            // Not changingVM: a write that succeeded leaves its config in the
            // scan cache (write(to:) does), which changingVM would drop again.
            if let written = try? await volumes.vmLocks.run(key, {
                let batch = self.queued.withLock { queues in
                    defer { queues[key] = [] }
                    return queues[key] ?? []
                }
                let (postponed, written) = await Self.write(batch, to: target, in: volumes)
                // First in the next write, which sees the slots this one freed.
                self.queued.withLock { $0[key, default: []].insert(contentsOf: postponed, at: 0) }
                return written
            }) {
                vm = written  // a migrated VM's later batches go to its new node
            }
            let idle = queued.withLock { queues in
                guard queues[key]?.isEmpty ?? true else { return false }
                queues[key] = nil
                return true
            }
            if idle { return }
        }
    }

    /// One write for the whole batch: read the config, let each edit change
    /// the draft, send the difference with the config's digest. Returns the
    /// edits postponed to the next write, and the VM as last written to.
    ///
    /// A VM that migrated is no longer known to the node it was on (qemu-server
    /// answers "Configuration file … does not exist"): the batch follows it to
    /// its node in a fresh listing, and fails notFound only when no listing has it.
    private static func write(_ batch: [Waiting], to target: VMRef, in volumes: ProxmoxVolumes) async -> ([Waiting], VMRef) {
        var vm = target
        guard !batch.isEmpty else { return ([], vm) }
        let client: any ProxmoxCluster
        do { client = try volumes.client(vm.cluster) } catch { batch.forEach { $0.resume(.failure(error)) }; return ([], vm) }
        var members = batch, postponed: [Waiting] = []
        func moved() async -> VMRef? {
            guard let found = try? await volumes.vms(vm.cluster, fresh: true).first(where: { $0.vmid == vm.vmid }),
                  found.node != vm.node else { return nil }
            return found
        }
        var usedRecentRead = false
        for attempt in 1...attempts {
            let config: VMConfig
            do {
                if attempt == 1, let recent = volumes.lastRead(vm, within: min(volumes.scanSeconds, Self.recentReadSeconds)) {
                    config = recent
                    usedRecentRead = true
                } else {
                    usedRecentRead = false
                    let (at, changes) = (ProcessInfo.processInfo.systemUptime, volumes.scanChanges(vm))
                    config = try await client.vmConfigWithPending(node: vm.node, vmid: vm.vmid)
                    // Scans see it too: it may hold what another tool changed since their last read.
                    volumes.configRead(vm, config, at: at, changesBefore: changes)
                }
            } catch ProxmoxError.notFound where attempt < attempts {
                if let found = await moved() { vm = found; continue }
                (members + postponed).forEach { $0.resume(.failure(ProxmoxError.notFound("VM \(vm.vmid) is on no node"))) }
                return ([], vm)
            } catch {
                (members + postponed).forEach { $0.resume(.failure(error)) }
                return ([], vm)
            }
            var draft = ConfigDraft(config: config)
            var accepted: [Waiting] = []
            var refused: [(Waiting, any Error)] = []
            let candidates = members + postponed
            postponed = []
            for member in candidates {
                var trial = draft
                do {
                    try member.edit(&trial)
                    draft = trial
                    accepted.append(member)
                } catch is NextWrite {
                    postponed.append(member)
                } catch {
                    refused.append((member, error))
                }
            }
            var (set, delete) = difference(from: draft.read, to: draft.values)
            for key in draft.resend.sorted() where !set.contains(where: { $0.0 == key }) {
                if let value = draft.values[key] { set.append((key, value)) }
            }
            let revert = draft.revert.sorted()
            set.removeAll { revert.contains($0.0) }
            delete.removeAll(where: revert.contains)
            let nothingToWrite = set.isEmpty && delete.isEmpty && revert.isEmpty
            if usedRecentRead && (nothingToWrite || !refused.isEmpty) {
                // A refusal, or "already so", would rest on that earlier read alone (no digest
                // guards an answer that writes nothing): decided again on a read made now.
                (members, postponed) = (candidates, [])
                continue
            }
            refused.forEach { $0.0.resume(.failure($0.1)) }
            members = accepted
            if nothingToWrite {
                let outcome = ConfigOutcome(vm: vm, config: config)  // nothing to write: the config just read stands
                members.forEach { $0.resume(.success(outcome)) }
                return (postponed, vm)
            }
            do {
                do {
                    try await client.updateVMConfig(node: vm.node, vmid: vm.vmid, set: set, delete: delete, revert: revert,
                                                    digest: config.digest)
                } catch {
                    volumes.configChanged(vm)  // a failed write may still have changed some keys
                    throw error
                }
                let outcome = ConfigOutcome(vm: vm, config: draft.written(set: set, delete: delete, revert: revert, vmid: vm.vmid))
                // Before anyone hears of success, so no scan they start can see the old config.
                volumes.configWritten(vm, outcome.config)
                members.forEach { $0.resume(.success(outcome)) }
                return (postponed, vm)
            } catch ProxmoxError.digestConflict where attempt < attempts {
                continue  // someone else changed the config: decide again on the new one
            } catch ProxmoxError.notFound where attempt < attempts {
                if let found = await moved() { vm = found; continue }  // migrated between the read and the write
                members.forEach { $0.resume(.failure(ProxmoxError.notFound("VM \(vm.vmid) is on no node"))) }
                return (postponed, vm)
            } catch let error as ProxmoxError where members.count > 1 && mayConcernOneEdit(error) {
                // Proxmox refused or failed part of the change: each edit again
                // alone, so one bad edit cannot fail the others.
                for member in members { postponed += await write([member], to: vm, in: volumes).0 }
                return (postponed, vm)
            } catch {
                members.forEach { $0.resume(.failure(error)) }
                return (postponed, vm)
            }
        }
        return (postponed, vm)  // not reached: the last attempt returns
    }

    /// Errors that may come from one edit's values (a bad option, a failed
    /// hot-plug) rather than from the VM or the connection.
    package static func mayConcernOneEdit(_ error: ProxmoxError) -> Bool {
        switch error {
        case .invalidParameters, .badRequest, .server, .taskFailed: true
        default: false
        }
    }

    /// The keys to set (sorted, for a stable request) and to delete that turn `old` into `new`.
    package static func difference(from old: [String: String], to new: [String: String]) -> (set: [(String, String)], delete: [String]) {
        let set = new.filter { old[$0.key] != $0.value }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        let delete = old.keys.filter { new[$0] == nil }.sorted()
        return (set, delete)
    }
}
