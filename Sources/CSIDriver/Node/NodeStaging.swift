import BlockDevice
import CSIProto
import FoundationEssentials
import UnaryGRPC
import TextSupport

extension NodeService {
    static let supportedFilesystems = ["xfs", "ext4"]

    /// Finds the volume's disk, makes sure it carries the filesystem (formatting
    /// only a blank disk) and mounts it at the staging path. Block access needs
    /// no staging mount: the disk is only looked for, so a missing one fails here.
    /// An encrypted class (its secret gives a passphrase) puts a LUKS mapping
    /// between the disk and the filesystem, or the pod's block device.
    func stage(_ request: Csi_V1_NodeStageVolumeRequest) async throws -> Csi_V1_NodeStageVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        try checkPath(request.stagingTargetPath, field: "staging_target_path")
        try checkCapability(request.volumeCapability, present: request.hasVolumeCapability)
        let passphrase = try Self.passphrase(in: request.secrets)
        let volume = try NodeVolume(id: request.volumeID, publishContext: request.publishContext,
                                    staged: identities.identity(of: request.volumeID))
        let capability = request.volumeCapability
        let readonly = Self.readsOnly(capability)
        let what = "NodeStageVolume \(volume.id)"
        guard case .mount = capability.accessType else {
            return try await serialized(volume.id) {
                let disk = try await device(of: volume, timeout: settings.deviceWaitSeconds)
                if let passphrase {
                    try identities.record(volume.identity(encrypted: true))
                    _ = try await openEncrypted(volume, disk: disk, passphrase: passphrase, readonly: readonly, what: what)
                } else {
                    try await refuseOwnLUKS(disk, what: what)
                    try identities.record(volume.identity(encrypted: false))
                }
                return .init()
            }
        }
        let fsType = try Self.filesystem(capability, context: request.volumeContext)
        let options = try Self.mkfsOptions(request.volumeContext)
        return try await serialized(volume.id) {
            let disk = try await device(of: volume, timeout: settings.deviceWaitSeconds)
            // Recorded before the mount: a crash between the two leaves a mount the unstage still recognises.
            try identities.record(volume.identity(encrypted: passphrase != nil))
            var source = disk
            if let passphrase {
                source = try await openEncrypted(volume, disk: disk, passphrase: passphrase, readonly: readonly, what: what)
            }
            try await mountFilesystem(volume, device: source, at: request.stagingTargetPath, fsType: fsType,
                                      readonly: readonly, flags: capability.mount.mountFlags, mkfs: options)
            if request.publishContext["resizeRequired"] == "true", !readonly {
                try await growOwed(volume, disk: disk, source: source, passphrase: passphrase, at: request.stagingTargetPath, fsType: fsType)
            }
            return .init()
        }
    }

    private func mountFilesystem(_ volume: NodeVolume, device: (path: String, number: String), at path: String, fsType: String,
                                 readonly: Bool, flags: [String], mkfs: (blockSize: Int?, inodeSize: Int?)) async throws {
        let what = "NodeStageVolume \(volume.id)"
        switch try inspect(path) {
        case .nothing: break
        case let .filesystem(entry, _) where entry.device == device.number:
            // A `ro` mount flag makes a read-write stage read-only too: a retry of it is the same stage.
            guard entry.options.contains("ro") == (readonly || flags.contains("ro")) else {
                throw RPCError(.alreadyExists, "\(what): already staged at \(path) \(readonly ? "read-write" : "read-only"), "
                    + "now asked \(readonly ? "read-only" : "read-write")")
            }
            guard entry.fsType == fsType else {
                throw RPCError(.alreadyExists, "\(what): already staged at \(path) as \(entry.fsType), now asked \(fsType)")
            }
            return
        case let other:
            throw RPCError(.alreadyExists, "\(what): staging_target_path \(path) already holds \(other.summary), not this volume's disk")
        }
        if !FileManager.default.fileExists(atPath: path) {
            do {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            } catch {
                throw RPCError(.internal, "\(what): cannot create staging_target_path \(path): \(error.reason)")
            }
        }
        let formatted: Bool
        do {
            formatted = try await format.ensureFilesystem(device.path, fsType: fsType, blockSize: mkfs.blockSize,
                                                          inodeSize: mkfs.inodeSize, mayFormat: !readonly)
        } catch let failure as SafeFormat.Failure {
            switch failure {
            case let .holdsData(_, found, _) where found.contains("crypto_LUKS"):
                throw RPCError(.failedPrecondition, "\(what): \(failure). It is LUKS-encrypted: its StorageClass must give the "
                    + "passphrase in the node-stage secret (key \(Self.encryptionPassphraseKey))")
            case .holdsData, .blank: throw RPCError(.failedPrecondition, "\(what): \(failure)")
            case .timedOut: throw RPCError(.deadlineExceeded, "\(what): \(failure)")
            case .tool, .probe: throw RPCError(.internal, "\(what): \(failure)")
            }
        }
        do {
            if fsType == "ext4", !readonly, !formatted { try await mounter.checkExt4(device.path) }
            try await mounter.mount(device.path, at: path, fsType: fsType,
                                    options: Self.mountOptions(fsType: fsType, readonly: readonly, flags: flags))
        } catch let failure as Mounter.Failure {
            // DEADLINE_EXCEEDED is not final to kubelet: it keeps the stage "uncertain" and unstages it on cleanup.
            throw RPCError(failure.timedOut ? .deadlineExceeded : .internal, "\(what): \(failure)")
        }
    }

    /// A volume proxmox-csi-plugin restored smaller than asked: the controller
    /// grew its disk at publish (after the hot-plug, so the size is read again)
    /// and says `resizeRequired`; the filesystem grows to match, as the plugin's
    /// NodeStageVolume did. Growing an already full filesystem changes nothing.
    private func growOwed(_ volume: NodeVolume, disk: (path: String, number: String), source: (path: String, number: String),
                          passphrase: SecretBytes?, at path: String, fsType: String) async throws {
        if let entry = finder.disk(number: disk.number) { await finder.rescan(entry) }
        if let passphrase {
            let what = "NodeStageVolume \(volume.id)"
            let name = source.path.lastPathComponent
            try await luksCall(what) { try await luks.resize(name, passphrase: passphrase) }
        }
        do {
            try await mounter.grow(fsType: fsType, device: source.path, mountPoint: path)
        } catch let failure as Mounter.Failure {
            throw RPCError(failure.timedOut ? .deadlineExceeded : .internal, "NodeStageVolume \(volume.id): \(failure)")
        }
    }

    /// Unmounts the staging path if the volume's filesystem is there and
    /// closes its LUKS mapping. The directory stays: kubelet made it and removes it.
    func unstage(_ request: Csi_V1_NodeUnstageVolumeRequest) async throws -> Csi_V1_NodeUnstageVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        try checkPath(request.stagingTargetPath, field: "staging_target_path")
        let what = "NodeUnstageVolume \(request.volumeID)"
        return try await serialized(request.volumeID) {
            try await requireOwnMount(inspect(request.stagingTargetPath), at: request.stagingTargetPath, volumeID: request.volumeID,
                                what: "NodeUnstageVolume")
            do {
                try Unmounter.unmount(request.stagingTargetPath)
            } catch {
                throw RPCError(.internal, "\(what): \(error)")
            }
            try await closeEncrypted(request.volumeID, what: what)
            identities.forget(request.volumeID)
            return .init()
        }
    }

    /// The filesystem a mount capability asks for: its fs_type, else the
    /// StorageClass's (in the volume context), else ext4.
    static func filesystem(_ capability: Csi_V1_VolumeCapability, context: [String: String]) throws(RPCError) -> String {
        let fromContext = context[VolumeParameters.fsTypeKey].flatMap { $0.isEmpty ? nil : $0 }
        let fsType = capability.mount.fsType.isEmpty ? (fromContext ?? "ext4") : capability.mount.fsType
        guard supportedFilesystems.contains(fsType) else {
            throw RPCError(.invalidArgument, "volume_context[\(VolumeParameters.fsTypeKey)]: \"\(fsType)\" is not supported (xfs or ext4)")
        }
        return fsType
    }

    /// blockSize and inodeSize from the StorageClass, carried in the volume context.
    static func mkfsOptions(_ context: [String: String]) throws(RPCError) -> (blockSize: Int?, inodeSize: Int?) {
        func size(_ key: String) throws(RPCError) -> Int? {
            guard let text = context[key] else { return nil }
            guard let value = Int(text), value > 0, value & (value - 1) == 0 else {
                throw RPCError(.invalidArgument, "volume_context[\(key)]: \"\(text)\" is not a power of two")
            }
            return value
        }
        return (try size("blockSize"), try size("inodeSize"))
    }

    /// The capability's flags, `ro` for readers, `nouuid` for xfs so a
    /// restored copy can be mounted beside its original (same fs UUID), and
    /// errors=remount-ro for ext4 unless the flags choose: an error stops
    /// writes instead of letting them go on over a damaged filesystem (the
    /// default from the superblock, errors=continue, would).
    static func mountOptions(fsType: String, readonly: Bool, flags: [String]) -> [String] {
        var options = flags.filter { !$0.isEmpty }
        if readonly, !options.contains("ro") { options.append("ro") }
        if fsType == "xfs", !options.contains("nouuid") { options.append("nouuid") }
        if fsType == "ext4", !options.contains(where: { $0.hasPrefix("errors=") }) { options.append("errors=remount-ro") }
        return options
    }
}
