import BlockDevice
import CSIProto
import FoundationEssentials
import UnaryGRPC

extension NodeService {
    /// Bytes and inodes of a mounted volume, the size of a block one, and
    /// whether it is healthy: mounted, its disk present, its filesystem writable.
    /// Answered at once, on the event loop, unless the volume's identity was
    /// never recorded here and Proxmox can be asked: then that is awaited on the loop.
    func volumeStats(_ request: Csi_V1_NodeGetVolumeStatsRequest) throws -> Answer<Csi_V1_NodeGetVolumeStatsResponse> {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        try checkVolumePath(request.volumePath, of: request.volumeID)
        if let volume = try recordedVolume(request.volumeID) {
            return .now(try volumeStats(of: volume, at: request.volumePath))
        }
        guard volumes != nil else {
            return .now(try volumeStats(of: NodeVolume(id: request.volumeID), at: request.volumePath))
        }
        return .later { try await self.volumeStats(of: self.unrecordedVolume(request.volumeID), at: request.volumePath) }
    }

    private func volumeStats(of volume: NodeVolume, at path: String) throws -> Csi_V1_NodeGetVolumeStatsResponse {
        let mounted = try inspect(path)
        if let disk = mounted.disk, !volume.isOn(disk) {
            throw RPCError(.notFound, "volume \(volume.id) is not at volume_path \(path): it holds \(mounted.summary)")
        }
        func abnormal(_ message: String) -> Csi_V1_NodeGetVolumeStatsResponse {
            .with { $0.volumeCondition = .with { $0.abnormal = true; $0.message = message } }
        }
        switch mounted {
        case .nothing:
            return abnormal("nothing is mounted at \(path): the volume's mount is gone")
        case let .blockDevice(_, number, disk):
            guard disk != nil else { return abnormal("the disk (device \(number)) is gone from this VM") }
            do {
                let bytes = try DeviceFacts.blockDeviceBytes(path)
                return .with {
                    $0.usage = [.with { $0.unit = .bytes; $0.total = bytes }]
                    $0.volumeCondition = .with { $0.abnormal = false; $0.message = "block device \(disk!.name) present" }
                }
            } catch {
                return abnormal("cannot read the device: \(error)")
            }
        case let .filesystem(entry, disk):
            guard let disk else { return abnormal("the disk (device \(entry.device)) is gone from this VM; \(path) is a stale mount") }
            let usage: FilesystemUsage
            do {
                usage = try DeviceFacts.usage(at: path)
            } catch {
                return abnormal("the filesystem does not answer: \(error)")
            }
            if let problem = Self.filesystemProblem(entry, disk: disk, at: path, usage: usage) { return abnormal(problem) }
            return .with {
                $0.usage = [
                    .with { $0.unit = .bytes; $0.total = usage.totalBytes; $0.available = usage.availableBytes; $0.used = usage.usedBytes },
                    .with { $0.unit = .inodes; $0.total = usage.totalInodes; $0.available = usage.freeInodes; $0.used = usage.usedInodes },
                ]
                $0.volumeCondition = .with { $0.abnormal = false; $0.message = "\(entry.fsType) on \(disk.name) mounted" }
            }
        }
    }

    /// Why a mounted filesystem whose disk is present is unhealthy, asked of
    /// the filesystem itself: mountinfo keeps saying `rw` after the kernel
    /// stopped writes (ext4 on 6.1), and statvfs answers a shut-down XFS.
    static func filesystemProblem(_ entry: MountEntry, disk: DiskEntry, at path: String, usage: FilesystemUsage) -> String? {
        if let failure = DeviceFacts.statFailure(path) {
            return "the \(entry.fsType) filesystem on \(disk.name) does not answer (\(failure)): it has shut down; see dmesg"
        }
        if entry.fsType.hasPrefix("ext"), let errors = DeviceFacts.ext4Errors(device: disk.name), errors > 0 {
            let stopped = entry.superOptions.contains("errors=remount-ro") ? " and went read-only (errors=remount-ro)" : ""
            return "the \(entry.fsType) filesystem on \(disk.name) has recorded \(errors) error(s)\(stopped); see dmesg. "
                + "It is checked (fsck) when next staged"
        }
        // The kernel turned the filesystem read-only under a writable mount: it met errors.
        // (Older kernels flip the superblock to `ro`; later ones say `emergency_ro`.)
        let wentReadOnly = entry.superOptions.contains("ro") || entry.superOptions.contains("emergency_ro") || usage.readOnly
        if wentReadOnly, !entry.options.contains("ro") {
            return "the \(entry.fsType) filesystem on \(disk.name) went read-only (the kernel met errors; see dmesg)"
        }
        return nil
    }

    /// Re-reads the disk's size and grows the LUKS mapping (when encrypted)
    /// and the filesystem on it to match; a block volume only reports its size.
    func expand(_ request: Csi_V1_NodeExpandVolumeRequest) async throws -> Csi_V1_NodeExpandVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard request.capacityRange.requiredBytes >= 0, request.capacityRange.limitBytes >= 0 else {
            throw RPCError(.invalidArgument, "capacity_range.required_bytes and limit_bytes cannot be negative")
        }
        try checkVolumePath(request.volumePath, of: request.volumeID)
        if !request.stagingTargetPath.isEmpty { try checkPath(request.stagingTargetPath, field: "staging_target_path") }
        if request.hasVolumeCapability { try checkCapability(request.volumeCapability, present: true) }
        let volume = try await knownVolume(request.volumeID)
        let what = "NodeExpandVolume \(volume.id)"
        return try await serialized(volume.id) {
            let mounted = try inspect(request.volumePath)
            guard let disk = mounted.disk else {
                throw RPCError(mounted.entry == nil ? .notFound : .failedPrecondition,
                               "\(what): volume_path \(request.volumePath) holds \(mounted.entry == nil ? "no mounted volume" : "a volume whose disk is gone")")
            }
            guard volume.isOn(disk) else {
                throw RPCError(.notFound, "\(what): volume_path \(request.volumePath) holds \(mounted.summary)")
            }
            if let failure = DeviceFacts.statFailure(request.volumePath) {
                throw RPCError(.failedPrecondition, "\(what): the filesystem at volume_path \(request.volumePath) does not answer "
                    + "(\(failure)); it cannot grow until it is checked and staged again")
            }
            await finder.rescan(disk)
            // An encrypted volume's size is its disk's; the mapping is the disk less the LUKS header.
            let diskName = disk.encrypts ?? disk.name
            let bytes: Int64
            do {
                bytes = try DeviceFacts.blockDeviceBytes(disk.encrypts.map { settings.devRoot + "/" + $0 } ?? disk.devicePath)
            } catch {
                throw RPCError(.internal, "\(what): \(error)")
            }
            let required = request.capacityRange.requiredBytes
            guard required <= bytes else {
                throw RPCError(.failedPrecondition, "\(what): disk \(diskName) is \(bytes) bytes, less than the "
                    + "\(required) asked; the controller's resize has not reached this VM yet")
            }
            if disk.encrypts != nil { try await growMapping(disk, secrets: request.secrets, rpc: "node-expand", what: what) }
            if case let .filesystem(entry, _) = mounted {
                // Grow through the writable staging mount when given: the published bind may be read-only.
                let mountPoint = request.stagingTargetPath.isEmpty ? request.volumePath : request.stagingTargetPath
                do {
                    try await mounter.grow(fsType: entry.fsType, device: disk.devicePath, mountPoint: mountPoint)
                } catch let failure as Mounter.Failure {
                    throw RPCError(failure.timedOut ? .deadlineExceeded : .internal, "\(what): \(failure)")
                }
            }
            return .with { $0.capacityBytes = bytes }
        }
    }
}
