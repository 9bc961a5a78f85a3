#if canImport(Glibc)
import Glibc
#endif
import BlockDevice
import CSIProto
import FoundationEssentials
import UnaryGRPC
import TextSupport

extension NodeService {
    /// Mount access: binds the staged filesystem onto the target directory.
    /// Block access: binds the disk's device node onto a target file.
    /// Read-only when the request or the access mode says so.
    func publish(_ request: Csi_V1_NodePublishVolumeRequest) async throws -> Csi_V1_NodePublishVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        try checkPath(request.targetPath, field: "target_path")
        try checkCapability(request.volumeCapability, present: request.hasVolumeCapability)
        let isBlock = if case .block = request.volumeCapability.accessType { true } else { false }
        if !isBlock { try checkPath(request.stagingTargetPath, field: "staging_target_path") }
        let volume = try NodeVolume(id: request.volumeID, publishContext: request.publishContext,
                                    staged: identities.identity(of: request.volumeID))
        let readonly = request.readonly || Self.readsOnly(request.volumeCapability)
        let what = "NodePublishVolume \(volume.id)"
        return try await serialized(volume.id) {
            let mounted = try inspect(request.targetPath)
            if let entry = mounted.entry {
                let publishedAsBlock = if case .blockDevice = mounted { true } else { false }
                guard let disk = mounted.disk, volume.isOn(disk), publishedAsBlock == isBlock else {
                    throw RPCError(.alreadyExists, "\(what): target_path \(request.targetPath) already holds \(mounted.summary)"
                        + (mounted.disk.map(volume.isOn) == true ? " (this volume, published for \(publishedAsBlock ? "block" : "mount") access)" : ""))
                }
                // A bind of a read-only stage (its `ro` mount flag) is read-only whatever was asked.
                let staged = isBlock ? nil : try inspect(request.stagingTargetPath).entry
                let stagedReadOnly = staged?.options.contains("ro") == true
                guard entry.options.contains("ro") == (readonly || stagedReadOnly) else {
                    throw RPCError(.alreadyExists, "\(what): already published at \(request.targetPath) "
                        + "\(readonly ? "read-write" : "read-only"), now asked \(readonly ? "read-only" : "read-write")")
                }
                // The first call may have ended between the bind and the disk's read-only flag.
                if isBlock, readonly, (try? DeviceFacts.isBlockDeviceReadOnly(disk.devicePath)) != true {
                    do {
                        try DeviceFacts.setBlockDeviceReadOnly(disk.devicePath, true)
                    } catch {
                        throw RPCError(.internal, "\(what): \(error)")
                    }
                }
                return .init()
            }
            let source: String, deviceNumber: String
            if isBlock {
                let disk = try await device(of: volume, timeout: settings.deviceWaitSeconds)
                (source, deviceNumber) = try encryptedBlockSource(volume, disk: disk, what: what) ?? disk
            } else {
                guard case let .filesystem(entry, disk) = try inspect(request.stagingTargetPath), let disk, volume.isOn(disk) else {
                    throw RPCError(.failedPrecondition, "\(what): the volume is not staged at staging_target_path "
                        + "\(request.stagingTargetPath); NodeStageVolume comes first")
                }
                (source, deviceNumber) = (request.stagingTargetPath, entry.device)
            }
            let others = try publications(ofDevice: deviceNumber, except: [request.stagingTargetPath, request.targetPath])
            // SINGLE_NODE_SINGLE_WRITER: one workload only, so one published target (CSI spec; csi-sanity checks it).
            if request.volumeCapability.accessMode.mode == .singleNodeSingleWriter, let other = others.first {
                throw RPCError(.failedPrecondition, "\(what): access mode SINGLE_NODE_SINGLE_WRITER allows one target, "
                    + "and the volume is already published at \(other.mountPoint)")
            }
            if isBlock { try checkBlockReadOnly(source, readonly: readonly, others: others, what: what) }
            try createTarget(request.targetPath, asFile: isBlock, what: what)
            do {
                try await mounter.bind(source, at: request.targetPath, readonly: readonly)
                if isBlock, readonly { try DeviceFacts.setBlockDeviceReadOnly(source, true) }
            } catch {
                // A bind that half-happened (bound, remount ro failed) must not stay writable.
                try? Unmounter.unmount(request.targetPath)
                throw RPCError((error as? Mounter.Failure)?.timedOut == true ? .deadlineExceeded : .internal, "\(what): \(error)")
            }
            return .init()
        }
    }

    /// Unmounts the target if the volume is mounted there and removes it; a
    /// missing target is done. Never unmounts another disk.
    func unpublish(_ request: Csi_V1_NodeUnpublishVolumeRequest) async throws -> Csi_V1_NodeUnpublishVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        try checkPath(request.targetPath, field: "target_path")
        return try await serialized(request.volumeID) {
            let mounted = try inspect(request.targetPath)
            try await requireOwnMount(mounted, at: request.targetPath, volumeID: request.volumeID, what: "NodeUnpublishVolume")
            do {
                try Unmounter.unmountAndRemove(request.targetPath)
            } catch {
                throw RPCError(.internal, "NodeUnpublishVolume \(request.volumeID): \(error)")
            }
            // The last read-only block target gone: the disk takes writes again (a later stage formats or mounts it).
            if case let .blockDevice(entry, number, disk?) = mounted, entry.options.contains("ro"),
               try publications(ofDevice: number, except: []).isEmpty {
                try? DeviceFacts.setBlockDeviceReadOnly(disk.devicePath, false)
            }
            return .init()
        }
    }

    /// A read-only block target is enforced by the disk's own read-only flag,
    /// which holds for every target of that disk: read-only and read-write
    /// block targets of one disk cannot be mixed on a node.
    private func checkBlockReadOnly(_ device: String, readonly: Bool, others: [MountEntry], what: String) throws(RPCError) {
        if let other = others.first(where: { $0.options.contains("ro") != readonly }) {
            throw RPCError(.failedPrecondition, "\(what): the volume is published \(readonly ? "read-write" : "read-only") at "
                + "\(other.mountPoint); a block volume is read-only through the disk's own flag, so it cannot be both on one node")
        }
        // A flag left from an earlier read-only target (none remains) is cleared for a writer.
        if !readonly, others.isEmpty, (try? DeviceFacts.isBlockDeviceReadOnly(device)) == true {
            try? DeviceFacts.setBlockDeviceReadOnly(device, false)
        }
    }

    /// Mount points inside kubelet's directories that show the disk `number`
    /// (a bound filesystem, or a bound device node), other than `paths`.
    private func publications(ofDevice number: String, except paths: Set<String>) throws(RPCError) -> [MountEntry] {
        let excluded = Set(paths.map(MountTable.resolvingSymlinks))
        let roots = settings.allowedRoots.map(MountTable.resolvingSymlinks)
        return try mountTable().filter { entry in
            !excluded.contains(entry.mountPoint) && roots.contains { entry.mountPoint.hasPrefix($0 + "/") }
                && (entry.device == number || DeviceFacts.blockDeviceNumber(entry.mountPoint) == number)
        }
    }

    /// The target is the SP's to create: a directory for a filesystem, an empty file for a device.
    private func createTarget(_ path: String, asFile: Bool, what: String) throws(RPCError) {
        let manager = FileManager.default
        var isDirectory = false
        let exists = manager.fileExists(atPath: path, isDirectory: &isDirectory)
        if exists, isDirectory == asFile {
            throw RPCError(.alreadyExists, "\(what): target_path \(path) exists as a \(asFile ? "directory" : "file"); "
                + "a \(asFile ? "block" : "mount") volume needs a \(asFile ? "file" : "directory")")
        }
        guard !exists else { return }
        do {
            let parent = path.deletingLastPathComponent
            try manager.createDirectory(atPath: parent, withIntermediateDirectories: true)
            if asFile {
                // open(O_EXCL), not FileManager.createFile: that links Foundation's temporary-file writer.
                let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
                close(fd)
            } else {
                try manager.createDirectory(atPath: path, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o750])
            }
        } catch {
            throw RPCError(.internal, "\(what): cannot create target_path \(path): \(error.reason)")
        }
    }
}
