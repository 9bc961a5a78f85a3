import BlockDevice
import FoundationEssentials
import ProxmoxDomain
import UnaryGRPC
import TextSupport

/// LUKS2 volumes, opted into as proxmox-csi-plugin's StorageClasses do: the
/// node-stage (and node-expand) secret carries `encryption-passphrase`. The
/// disk then holds a LUKS2 header; the filesystem, or the raw block device a
/// pod sees, is the open mapping /dev/mapper/csi-<hash of the volume id>.
extension NodeService {
    /// The node-stage secret key of proxmox-csi-plugin's encrypted StorageClasses (its node.go).
    static let encryptionPassphraseKey = "encryption-passphrase"

    /// The passphrase a call's secrets give; nil when the class is not encrypted.
    static func passphrase(in secrets: [String: String]) throws(RPCError) -> SecretBytes? {
        guard let text = secrets[encryptionPassphraseKey] else { return nil }
        guard !text.isEmpty else {
            throw RPCError(.invalidArgument, "secrets[\(encryptionPassphraseKey)] is empty: an encrypted volume needs a passphrase")
        }
        let passphrase = SecretBytes(text)
        guard passphrase.bytes.count <= SecretBytes.maximumCount else {
            throw RPCError(.invalidArgument, "secrets[\(encryptionPassphraseKey)] is \(passphrase.bytes.count) bytes, "
                + "more than the \(SecretBytes.maximumCount) a passphrase may have")
        }
        return passphrase
    }

    /// The mapping's name: one per volume, the same on every retry and after a restart.
    static func mappingName(of volumeID: String) -> String {
        "csi-" + String(sha256Hex(volumeID).prefix(32))
    }

    /// Opens the volume's LUKS mapping, first writing a LUKS2 header when the
    /// disk is blank, and returns the mapping's device. A disk that holds
    /// anything else (a filesystem in the clear, a partition table) is never
    /// touched: encrypting it would destroy it. A mapping already open on the
    /// disk (a retry, or one proxmox-csi-plugin opened before the switch) is used as it is.
    func openEncrypted(_ volume: NodeVolume, disk: (path: String, number: String), passphrase: SecretBytes,
                       readonly: Bool, what: String) async throws -> (path: String, number: String) {
        if let open = finder.mappings.mappings(over: disk.number).first {
            // Open already (a retry, a restart, the plugin): still only for this passphrase and this mode.
            try await luksCall(what) { try await luks.test(disk.path, passphrase: passphrase) }
            let openReadOnly = KernelFile.value(finder.mappings.sysRoot + "/block/" + open.kernelName + "/ro") == "1"
            if openReadOnly != readonly {
                throw RPCError(.failedPrecondition, "\(what): the volume's LUKS mapping \(open.name) is open "
                    + "\(readonly ? "read-write" : "read-only"), and this stage asks \(readonly ? "read-only" : "read-write"); unstage it first")
            }
            return try mappingDevice(open.name, what: what)
        }
        let found = try await probe(disk.path, what: what)
        if found.isBlank {
            guard !readonly else {
                throw RPCError(.failedPrecondition, "\(what): \(disk.path) is blank; it is not encrypted because it is to be used read-only")
            }
            try await luksCall(what) { try await luks.format(disk.path, passphrase: passphrase) }
        } else if found.type != LUKS.signature || found.partitionTable != nil {
            throw RPCError(.failedPrecondition, "\(what): \(disk.path) holds \(found.summary) in the clear, not a LUKS header; "
                + "an encrypted StorageClass never encrypts a device that holds data")
        }
        let name = Self.mappingName(of: volume.id)
        // Ours, still open over a disk that went away (detached under it): its name is needed again.
        if finder.mappings.mapping(named: name) != nil { try await luksCall(what) { try await luks.close(name) } }
        try await luksCall(what) { try await luks.open(disk.path, as: name, passphrase: passphrase, readonly: readonly) }
        return try mappingDevice(name, what: what)
    }

    /// Closes the volume's mappings after its last mount is gone: every crypt
    /// mapping on its disk (this driver's, or a `luks-…` one proxmox-csi-plugin
    /// opened), and this driver's by name when the disk is gone.
    func closeEncrypted(_ volumeID: String, what: String) async throws {
        // Most nodes hold no crypt mapping at all: then there is nothing to look up.
        let open = finder.mappings.all()
        guard !open.isEmpty else { return }
        let volume = try await knownVolume(volumeID)
        let disk = finder.find(serial: volume.serial, wwn: volume.wwn).flatMap(DeviceFacts.blockDeviceNumber)
        let names = open.filter { $0.name == Self.mappingName(of: volume.id) || (disk != nil && $0.lowerNumber == disk) }.map(\.name)
        for name in names {
            do {
                try await luks.close(name)
            } catch let failure as LUKS.Failure {
                if case .busy = failure { throw RPCError(.failedPrecondition, "\(what): \(failure)") }
                throw RPCError(.internal, "\(what): \(failure)")
            }
        }
    }

    /// A block stage with no passphrase of a disk this driver encrypted (its LUKS2
    /// label) is refused: the pod would get ciphertext, and its writes would
    /// destroy the header. (A LUKS header without the label is the pod's own: a
    /// workload may encrypt its raw block volume itself.)
    func refuseOwnLUKS(_ disk: (path: String, number: String), what: String) async throws {
        let found = try await probe(disk.path, what: what)
        guard found.type == LUKS.signature, found.label == LUKS.label else { return }
        throw RPCError(.failedPrecondition, "\(what): \(disk.path) is a volume this driver encrypted; its StorageClass must "
            + "give the passphrase in the node-stage secret (key \(Self.encryptionPassphraseKey)); it is not handed over as ciphertext")
    }

    /// Grows an open mapping to its grown disk (the passphrase from the
    /// node-expand secret: LUKS2 asks for it again).
    func growMapping(_ mapping: DiskEntry, secrets: [String: String], rpc: String, what: String) async throws {
        guard let passphrase = try Self.passphrase(in: secrets) else {
            throw RPCError(.invalidArgument, "\(what): the volume is encrypted, and growing it needs secrets[\(Self.encryptionPassphraseKey)]: "
                + "give the StorageClass csi.storage.k8s.io/\(rpc)-secret-name and -namespace naming its passphrase secret")
        }
        let name = mapping.devicePath.lastPathComponent
        try await luksCall(what) { try await luks.resize(name, passphrase: passphrase) }
    }

    /// What a block target of the volume binds: its open mapping when it has
    /// one; nil for the disk itself. A volume staged encrypted whose mapping
    /// is gone is refused: its raw disk is ciphertext and its LUKS header, which
    /// a pod's writes would destroy.
    func encryptedBlockSource(_ volume: NodeVolume, disk: (path: String, number: String),
                              what: String) throws(RPCError) -> (path: String, number: String)? {
        if let open = finder.mappings.mappings(over: disk.number).first { return try mappingDevice(open.name, what: what) }
        guard identities.identity(of: volume.id)?.encrypted != true else {
            throw RPCError(.failedPrecondition, "\(what): the volume was staged encrypted, and its LUKS mapping is not open on "
                + "this node; NodeStageVolume opens it again")
        }
        return nil
    }

    private func mappingDevice(_ name: String, what: String) throws(RPCError) -> (path: String, number: String) {
        let path = settings.devRoot + "/mapper/" + name
        guard let number = DeviceFacts.blockDeviceNumber(path) else {
            throw RPCError(.internal, "\(what): cryptsetup opened \(name), but \(path) is not a block device")
        }
        return (path, number)
    }

    private func probe(_ path: String, what: String) async throws -> ProbeResult {
        do {
            return try await BlockProbe.probeOffThread(path)
        } catch {
            throw RPCError(.internal, "\(what): \(error)")
        }
    }

    /// cryptsetup's failures as CSI codes: a wrong passphrase and a busy mapping are the caller's to fix.
    func luksCall(_ what: String, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let failure as LUKS.Failure {
            switch failure {
            case .wrongPassphrase, .busy: throw RPCError(.failedPrecondition, "\(what): \(failure); nothing was changed")
            case .timedOut: throw RPCError(.deadlineExceeded, "\(what): \(failure)")
            case .tool: throw RPCError(.internal, "\(what): \(failure)")
            }
        }
    }
}

extension ProbeResult {
    var summary: String {
        [type.map { "a \($0) signature" }, partitionTable.map { "a \($0) partition table" }].compactMap { $0 }.joined(separator: " and ")
    }
}
