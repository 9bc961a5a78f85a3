import CSIProto
import FoundationEssentials
import ProxmoxAPI
import ProxmoxDomain
import SwiftProtobuf
import UnaryGRPC

/// Snapshots, restores and clones: full copies held by copy VMs (CopyVMs.swift).
extension ControllerService {
    /// How long CreateSnapshot and CreateVolume wait for a copy before
    /// answering "not ready yet"; the sidecars call again.
    static let copyWait = 25.0

    func registerSnapshots(into router: inout Router) {
        let one = volumes.volumeLocks
        router.register("/csi.v1.Controller/CreateSnapshot") { request, _ in
            try await one.run("snapshot/\(request.name)") { try await createSnapshot(request) }
        }
        router.register("/csi.v1.Controller/DeleteSnapshot") { request, _ in
            try await one.run("snapshot-id/\(request.snapshotID)") { try await deleteSnapshot(request) }
        }
        router.register("/csi.v1.Controller/ListSnapshots") { request, _ in try await listSnapshots(request) }
    }

    // MARK: - Snapshot ids: <cluster>/<vmid>/<copy VM name>

    static func snapshotID(_ copy: CopyVM) -> String { "\(copy.vm.cluster)/\(copy.vm.vmid)/\(copy.vm.name)" }

    /// The snapshot an id names; nil when it names nothing (any more).
    func snapshot(_ id: String) async throws -> CopyVM? {
        let parts = id.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, config.clusters.contains(where: { $0.name == parts[0] }), let vmid = Int(parts[1]),
              parts[2].hasPrefix(CopyVM.Kind.snapshot.rawValue),
              let vm = try await volumes.vmsByCurrentNames(parts[0]).first(where: { $0.vmid == vmid && $0.name == parts[2] })
        else { return nil }
        return try await volumes.copyVM(vm)
    }

    /// A snapshot proxmox-csi-plugin took: a plain volume `vm-<controllerVmID>-snapshot-<uuid>`
    /// beside its source (its CreateSnapshot copies the volume under the snapshot's name, which
    /// external-snapshotter makes `snapshot-<VolumeSnapshot uid>`), its volume id the snapshot id.
    /// Restores copy it and DeleteSnapshot frees it; nil for anything else.
    func pluginSnapshot(_ id: String) async throws -> (handle: VolumeHandle, storage: StorageRef, size: Int64)? {
        guard id.split(separator: "/", omittingEmptySubsequences: false).count >= 4,
              let handle = try? VolumeHandle(parsing: id),
              handle.fileName.hasPrefix("vm-\(config.ownerVMID)-snapshot-"),
              handle.fileName.dropFirst("vm-\(config.ownerVMID)-snapshot-".count)
                  .wholeMatch(of: /[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}(\.(raw|qcow2))?/) != nil
        else { return nil }
        return try await volumes.existing(id)
    }

    /// Whether the volume's storage snapshots it natively now (NativeSnapshotSupport):
    /// a qcow2 file only while no VM has it attached.
    func takesNativeSnapshots(_ handle: VolumeHandle, storage: StorageRef) async throws -> Bool {
        guard config.nativeSnapshots else { return false }
        let fileStorage = VolumeNaming.isFileStorage(storage.type)
        let attached = fileStorage ? try await !volumes.attachments(of: handle, storage: storage).isEmpty : false
        return NativeSnapshotSupport.available(storageType: storage.type, volumeName: handle.fileName, attached: attached)
    }

    private func message(_ native: NativeSnapshot) -> Csi_V1_Snapshot {
        .with {
            $0.snapshotID = native.id
            $0.sourceVolumeID = native.source.source
            $0.sizeBytes = native.bytes
            $0.creationTime = Google_Protobuf_Timestamp(seconds: native.createdAt, nanos: 0)
            // Proxmox answers a snapshot's task only once the storage holds it.
            $0.readyToUse = true
        }
    }

    private func message(_ copy: CopyVM, size: Int64) -> Csi_V1_Snapshot {
        .with {
            $0.snapshotID = Self.snapshotID(copy)
            $0.sourceVolumeID = copy.source
            $0.sizeBytes = size
            $0.creationTime = Google_Protobuf_Timestamp(seconds: copy.createdAt, nanos: 0)
            $0.readyToUse = copy.settled
        }
    }

    /// Size of a copy VM's disk (the source's size while it is still copying).
    private func size(of copy: CopyVM, fallback: Int64) async throws -> Int64 {
        guard let volid = copy.volid, copy.settled else { return fallback }
        let storage = Volid.storage(of: volid)
        let found = try await volumes.client(copy.vm.cluster).volumes(node: copy.vm.node, storage: storage, vmid: copy.vm.vmid)
        return found.first { $0.volid == volid }?.size ?? fallback
    }

    // MARK: - CreateSnapshot / DeleteSnapshot / ListSnapshots

    func createSnapshot(_ request: Csi_V1_CreateSnapshotRequest) async throws -> Csi_V1_CreateSnapshotResponse {
        guard !request.name.isEmpty else { throw RPCError(.invalidArgument, "name is required") }
        guard !request.sourceVolumeID.isEmpty else { throw RPCError(.invalidArgument, "source_volume_id is required") }
        // A snapshot has no options of its own; the sidecar's metadata keys are welcome.
        if let key = request.parameters.keys.sorted().first(where: { !$0.hasPrefix(VolumeParameters.sidecarPrefix) }) {
            throw RPCError(.invalidArgument, "VolumeSnapshotClass parameter \"\(key)\" is not known: this driver takes none")
        }
        let what = "CreateSnapshot \(request.name) of \(request.sourceVolumeID)"
        do {
            guard let (handle, storage, size) = try await volumes.existing(request.sourceVolumeID) else {
                throw RPCError(.notFound, "source volume \(request.sourceVolumeID) does not exist")
            }
            let node = storage.node(for: handle)
            let volid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
            // A name is one snapshot whichever way it was taken (a copy of old, or natively).
            if let copy = try await volumes.copyVM(.snapshot, csiName: request.name, cluster: handle.cluster, fresh: false), copy.settled {
                guard copy.source == request.sourceVolumeID else {
                    throw RPCError(.alreadyExists, "snapshot \(request.name) exists for another volume (\(copy.source))")
                }
                return .with { $0.snapshot = message(copy, size: size) }
            }
            if try await takesNativeSnapshots(handle, storage: storage) {
                if let cached = try await volumes.recentNativeSnapshots().first(where: {
                       $0.csiName == request.name && $0.source.source != request.sourceVolumeID }),
                   let other = try await volumes.nativeSnapshots(of: cached.source).first(where: { $0.csiName == request.name }) {
                    throw RPCError(.alreadyExists, "snapshot \(request.name) exists for another volume (\(other.source.source))")
                }
                let native = try await volumes.takeNativeSnapshot(request.name, of: request.sourceVolumeID, volid: volid, bytes: size,
                                                                  cluster: handle.cluster, node: node)
                return .with { $0.snapshot = message(native) }
            }
            let copy = try await volumes.ensureCopyVM(
                .snapshot, csiName: request.name, source: request.sourceVolumeID, cluster: handle.cluster, node: node,
                storage: storage.id, sourceVolid: volid, wait: Self.copyWait)
            guard copy.source == request.sourceVolumeID else {
                throw RPCError(.alreadyExists, "snapshot \(request.name) exists for another volume (\(copy.source))")
            }
            return .with { $0.snapshot = message(copy, size: size) }
        } catch {
            throw rpcError(error, what)
        }
    }

    func deleteSnapshot(_ request: Csi_V1_DeleteSnapshotRequest) async throws -> Csi_V1_DeleteSnapshotResponse {
        guard !request.snapshotID.isEmpty else { throw RPCError(.invalidArgument, "snapshot_id is required") }
        do {
            if let copy = try await snapshot(request.snapshotID) {
                try await volumes.destroy(copy)
            } else if try await volumes.deleteNativeSnapshot(id: request.snapshotID) {
                // Deleted, or already gone, under its source VM.
            } else if let (handle, storage, _) = try await pluginSnapshot(request.snapshotID) {
                if let (vm, key) = try await volumes.attachments(of: handle, storage: storage).first {
                    throw RPCError(.failedPrecondition, "snapshot \(request.snapshotID) is attached to VM \(vm.vmid) as \(key); detach it first")
                }
                try await volumes.delete(handle, storage: storage)
            }
            return .init()
        } catch {
            throw rpcError(error, "DeleteSnapshot \(request.snapshotID)")
        }
    }

    func listSnapshots(_ request: Csi_V1_ListSnapshotsRequest) async throws -> Csi_V1_ListSnapshotsResponse {
        let start = try Paging.start(request.startingToken, maxEntries: request.maxEntries, what: "ListSnapshots")
        do {
            var copies: [CopyVM]
            var natives: [NativeSnapshot]
            if !request.snapshotID.isEmpty {
                copies = try await snapshot(request.snapshotID).map { [$0] } ?? []
                natives = try await volumes.nativeSnapshot(request.snapshotID).map { [$0] } ?? []
            } else {
                copies = try await volumes.copyVMs(.snapshot)
                natives = try await volumes.nativeSnapshots()
            }
            if !request.sourceVolumeID.isEmpty {
                copies = copies.filter { $0.source == request.sourceVolumeID }
                natives = natives.filter { $0.source.source == request.sourceVolumeID }
            }
            let all = (copies.map { (Self.snapshotID($0), Optional($0), NativeSnapshot?.none) }
                + natives.map { ($0.id, CopyVM?.none, Optional($0)) }).sorted { $0.0 < $1.0 }
            let page = try Paging.page(count: all.count, start: start, maxEntries: request.maxEntries, what: "ListSnapshots")
            var entries: [Csi_V1_ListSnapshotsResponse.Entry] = []
            for (_, copy, native) in all[page.range] {
                if let copy {
                    let size = try await size(of: copy, fallback: 0)
                    entries.append(.with { $0.snapshot = message(copy, size: size) })
                } else if let native {
                    entries.append(.with { $0.snapshot = message(native) })
                }
            }
            return .with {
                $0.entries = entries
                $0.nextToken = page.next
            }
        } catch {
            throw rpcError(error, "ListSnapshots")
        }
    }

    // MARK: - Volumes from a snapshot or another volume

    /// CreateVolume with a content source: a full copy owned by a record VM.
    func createVolumeFromSource(_ request: Csi_V1_CreateVolumeRequest, cluster: String,
                                parameters: VolumeParameters) async throws -> Csi_V1_CreateVolumeResponse {
        let sourceID: String
        let sourceVolid: String
        let sourceSize: Int64
        var sourceNode: String?
        switch request.volumeContentSource.type {
        case let .snapshot(snapshotSource)?:
            sourceID = snapshotSource.snapshotID
            if let native = try await volumes.nativeSnapshot(snapshotSource.snapshotID) {
                return try await restoreNative(request, from: native, cluster: cluster, parameters: parameters)
            }
            if let copy = try await snapshot(snapshotSource.snapshotID) {
                guard copy.settled, let volid = copy.volid else {
                    throw RPCError(.unavailable, "snapshot \(snapshotSource.snapshotID) is still being copied")
                }
                sourceVolid = volid
                sourceSize = try await size(of: copy, fallback: 0)
                sourceNode = copy.vm.node
            } else if let (handle, storage, size) = try await pluginSnapshot(snapshotSource.snapshotID) {
                sourceVolid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
                sourceSize = size
                sourceNode = handle.node
            } else {
                throw RPCError(.notFound, "snapshot \(snapshotSource.snapshotID) does not exist")
            }
        case let .volume(volumeSource)?:
            guard let (handle, storage, size) = try await liveVolume(volumeSource.volumeID) else {
                throw RPCError(.notFound, "source volume \(volumeSource.volumeID) does not exist")
            }
            sourceID = volumeSource.volumeID
            sourceVolid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
            sourceSize = size
            sourceNode = handle.node
        case nil:
            throw RPCError(.invalidArgument, "volume_content_source names neither a snapshot nor a volume")
        }
        guard let storage = try await volumes.storage(cluster, parameters.storage) else {
            throw RPCError(.invalidArgument, "StorageClass parameter \"storage\": no storage \"\(parameters.storage)\" in cluster \"\(cluster)\"")
        }
        var bytes = try Self.size(for: request.capacityRange)
        if bytes < sourceSize {
            guard request.capacityRange.limitBytes == 0 || sourceSize <= request.capacityRange.limitBytes else {
                throw RPCError(.outOfRange, "the source holds \(sourceSize) bytes, more than limit_bytes \(request.capacityRange.limitBytes)")
            }
            bytes = sourceSize
        }

        // The copy is made on the source's node (its local storage is only there).
        let node = sourceNode ?? storage.anyNode
        guard storage.available[node] != nil else {
            throw RPCError(.invalidArgument, "storage \(storage.id) is not available on node \(node), where the source is")
        }
        let copy = try await volumes.ensureCopyVM(.volume, csiName: request.name, source: sourceID, cluster: cluster, node: node,
                                                  storage: storage.id, sourceVolid: sourceVolid, bytes: bytes,
                                                  format: parameters.fileFormat(on: storage.type), wait: Self.copyWait)
        guard copy.source == sourceID else {
            throw RPCError(.alreadyExists, "volume \(request.name) exists with another content source (\(copy.source))")
        }
        guard copy.settled, let volid = copy.volid else {
            throw RPCError(.unavailable, "volume \(request.name) is still being copied from \(sourceID); try again")
        }
        let name = Volid.volumeName(of: volid)
        let handle = VolumeHandle(cluster: cluster, node: storage.shared ? nil : copy.vm.node, storage: storage.id, volume: name)
        let current = try await volumes.size(of: handle, storage: storage) ?? sourceSize
        var response = createdVolume(handle, bytes: max(current, bytes), storage: storage, parameters: parameters)
        response.volume.contentSource = request.volumeContentSource
        return response
    }

    /// CreateVolume from a native snapshot: a full clone of it, into a record VM on the
    /// source's node (clone_vm copies on the node the VM is on).
    private func restoreNative(_ request: Csi_V1_CreateVolumeRequest, from native: NativeSnapshot, cluster: String,
                               parameters: VolumeParameters) async throws -> Csi_V1_CreateVolumeResponse {
        guard native.source.vm.cluster == cluster else {
            throw RPCError(.invalidArgument, "snapshot \(native.id) is in cluster \(native.source.vm.cluster), not \(cluster)")
        }
        guard let storage = try await volumes.storage(cluster, parameters.storage) else {
            throw RPCError(.invalidArgument, "StorageClass parameter \"storage\": no storage \"\(parameters.storage)\" in cluster \"\(cluster)\"")
        }
        let node = native.source.vm.node
        guard storage.available[node] != nil else {
            throw RPCError(.invalidArgument, "storage \(storage.id) is not available on node \(node), where the snapshot is")
        }
        var bytes = try Self.size(for: request.capacityRange)
        if bytes < native.bytes {
            guard request.capacityRange.limitBytes == 0 || native.bytes <= request.capacityRange.limitBytes else {
                throw RPCError(.outOfRange, "the snapshot holds \(native.bytes) bytes, more than limit_bytes \(request.capacityRange.limitBytes)")
            }
            bytes = native.bytes
        }
        let copy = try await volumes.restoreNative(native, csiName: request.name, storage: storage.id, bytes: bytes, wait: Self.copyWait)
        guard copy.source == native.id else {
            throw RPCError(.alreadyExists, "volume \(request.name) exists with another content source (\(copy.source))")
        }
        guard copy.settled, let volid = copy.volid else {
            throw RPCError(.unavailable, "volume \(request.name) is still being copied from \(native.id); try again")
        }
        let handle = VolumeHandle(cluster: cluster, node: storage.shared ? nil : node, storage: storage.id, volume: Volid.volumeName(of: volid))
        let current = try await volumes.size(of: handle, storage: storage) ?? bytes
        var response = createdVolume(handle, bytes: max(current, bytes), storage: storage, parameters: parameters)
        response.volume.contentSource = request.volumeContentSource
        return response
    }

    /// The record VM owning a restored or cloned volume, if the handle names one.
    func recordVM(of handle: VolumeHandle, among listed: [VMRef]? = nil) async throws -> CopyVM? {
        guard let owner = handle.ownerVMID, owner != config.ownerVMID else { return nil }
        // Fresh: a record VM made by a clone is named only when its copy ends, after a cached listing may have been taken.
        let candidates = if let listed { listed } else { try await volumes.vmsByCurrentNames(handle.cluster) }
        guard let vm = candidates.first(where: { $0.vmid == owner && $0.name.hasPrefix(CopyVM.Kind.volume.rawValue) }) else { return nil }
        return try await volumes.copyVM(vm)
    }
}
