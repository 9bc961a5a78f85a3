import BlockDevice
import CSIProto
import FoundationEssentials
import ProxmoxDomain
import TextSupport
import UnaryGRPC

/// The disk a volume id stands for, as the guest sees it: the serial (and
/// for SCSI the WWN) the controller put on the Proxmox disk.
struct NodeVolume: Sendable {
    let id: String
    let serial: String
    let wwn: String?
    /// The SCSI LUN the disk is plugged at (publish context `lun`), which a
    /// missed hot-plug event is rescanned for; nil for virtio-blk.
    let scsiLUN: Int?

    /// The identity derives from the id; a publish context (what the
    /// controller actually set) wins when it has one, else the identity the
    /// volume was staged with.
    init(id: String, publishContext: [String: String] = [:], staged: NodeIdentities.Identity? = nil) throws(RPCError) {
        guard let handle = try? VolumeHandle(parsing: id) else {
            throw RPCError(.notFound, "volume_id \"\(id)\" is not a proxmox-csi volume (expected cluster/node/storage/volume)")
        }
        self.id = id
        let fromContext = publishContext["serial"] != nil || publishContext["wwn"] != nil
        serial = publishContext["serial"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (fromContext ? nil : staged?.serial) ?? VolumeNaming.serial(for: handle)
        wwn = publishContext["wwn"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (fromContext ? nil : staged?.wwn) ?? VolumeNaming.wwn(for: handle)
        scsiLUN = publishContext["bus"] == "virtio" ? nil : publishContext["lun"].flatMap { Int($0) }.flatMap { (0..<256).contains($0) ? $0 : nil }
    }

    func isOn(_ disk: DiskEntry) -> Bool {
        disk.matches(serial: serial, wwn: wwn)
    }

    var identity: NodeIdentities.Identity {
        .init(volumeID: id, serial: serial, wwn: wwn)
    }

    func identity(encrypted: Bool) -> NodeIdentities.Identity {
        .init(volumeID: id, serial: serial, wwn: wwn, encrypted: encrypted ? true : nil)
    }
}

/// What a path from a request holds right now.
enum MountedThing {
    /// Nothing is mounted there (it may still exist as a directory or file).
    case nothing
    /// A filesystem (or a bind of one); `disk` is nil when its device has vanished.
    case filesystem(MountEntry, disk: DiskEntry?)
    /// A device node bound onto a file (block access).
    case blockDevice(MountEntry, number: String, disk: DiskEntry?)

    var entry: MountEntry? {
        switch self {
        case .nothing: nil
        case let .filesystem(entry, _), let .blockDevice(entry, _, _): entry
        }
    }

    var disk: DiskEntry? {
        switch self {
        case .nothing: nil
        case let .filesystem(_, disk), let .blockDevice(_, _, disk): disk
        }
    }

    /// Whether it may be unmounted for `volume`: its disk, or a disk that has
    /// vanished (a stale mount). Another disk, or something that is not a
    /// disk at all (tmpfs, overlay), is never the volume's.
    func mayBeUnmounted(for volume: NodeVolume) -> Bool {
        switch self {
        case .nothing:
            return true
        case let .filesystem(entry, disk):
            if let disk { return volume.isOn(disk) }
            return !entry.device.hasPrefix("0:")
        case let .blockDevice(_, _, disk):
            return disk.map(volume.isOn) ?? true
        }
    }

    var summary: String {
        switch self {
        case .nothing: "nothing"
        case let .filesystem(entry, disk):
            "a \(entry.fsType) filesystem from \(entry.source)" + (disk.map(Self.describe) ?? "")
        case let .blockDevice(_, number, disk):
            "block device \(disk?.name ?? number)" + (disk.map(Self.describe) ?? "")
        }
    }

    private static func describe(_ disk: DiskEntry) -> String {
        if let parent = disk.partitionOf { return " (partition \(disk.name) of disk \(parent))" }
        return " (disk \(disk.name), serial \(disk.serial ?? "none"))"
    }
}

extension NodeService {
    /// The volume as a call without a publish context knows it: by the identity it
    /// was staged with; for one staged before this plugin ran (by proxmox-csi-plugin,
    /// before the switch), by the identity its line in this VM's config carries.
    func knownVolume(_ volumeID: String) async throws(RPCError) -> NodeVolume {
        if let recorded = try recordedVolume(volumeID) { return recorded }
        return try await unrecordedVolume(volumeID)
    }

    /// A volume with no recorded identity: as its disk's line in this VM's config
    /// says (then recorded), or derived from its id without Proxmox access.
    func unrecordedVolume(_ volumeID: String) async throws(RPCError) -> NodeVolume {
        guard let context = await attachedIdentity(of: volumeID) else { return try NodeVolume(id: volumeID) }
        let volume = try NodeVolume(id: volumeID, publishContext: context)
        // Asked once: kept as a stage's would be, so later calls and a restart know it.
        try? identities.record(volume.identity)
        return volume
    }

    /// The volume as this node recorded it when staging it (or when it was last
    /// asked of Proxmox); nil when nothing is recorded.
    func recordedVolume(_ volumeID: String) throws(RPCError) -> NodeVolume? {
        guard let staged = identities.identity(of: volumeID) else { return nil }
        return try NodeVolume(id: volumeID, staged: staged)
    }

    /// The serial and WWN of the disk that holds the volume in this VM's config,
    /// as ControllerPublish answers them; nil without Proxmox access, or when the
    /// config holds no such disk (the derived identity applies then).
    func attachedIdentity(of volumeID: String) async -> [String: String]? {
        guard let volumes, let handle = try? VolumeHandle(parsing: volumeID),
              let (vm, config) = try? await thisVM(volumes, identity: SMBIOSIdentity.read(sysRoot: settings.sysRoot)),
              vm.cluster == handle.cluster else { return nil }
        let slot = config.values.keys.sorted().first { key in
            guard ProxmoxVolumes.isDiskKey(key), let line = config[key] else { return false }
            let volid = ProxmoxVolumes.volid(of: line)
            return Volid.storage(of: volid) == handle.storage && Volid.volumeName(of: volid) == handle.fileName
        }
        guard let slot, let line = config[slot] else { return nil }
        let context = ControllerService.publishContext(for: AttachedDisk(slot: slot, line: line))
        return context["serial"] != nil || context["wwn"] != nil ? context : nil
    }

    func mountTable() throws(RPCError) -> [MountEntry] {
        do {
            return try MountTable.read()
        } catch {
            throw RPCError(.internal, "cannot read /proc/self/mountinfo: \(error)")
        }
    }

    /// Refuses to unmount `path` unless what is mounted there is the volume's (or a vanished) disk.
    func requireOwnMount(_ mounted: MountedThing, at path: String, volumeID: String, what: String) async throws(RPCError) {
        guard mounted.entry != nil else { return }
        let volume = try await knownVolume(volumeID)
        guard mounted.mayBeUnmounted(for: volume) else {
            throw RPCError(.failedPrecondition, "\(what) \(volume.id): \(path) holds \(mounted.summary), "
                + "not this volume's disk (serial \(volume.serial)); left mounted")
        }
    }

    func inspect(_ path: String) throws(RPCError) -> MountedThing {
        guard let entry = MountTable.mount(at: path, in: try mountTable()) else { return .nothing }
        if let number = DeviceFacts.blockDeviceNumber(path) {
            return .blockDevice(entry, number: number, disk: finder.disk(number: number))
        }
        return .filesystem(entry, disk: finder.disk(number: entry.device))
    }

    /// Absolute, no `..`, inside kubelet's directory; InvalidArgument naming the field.
    func checkPath(_ path: String, field: String) throws(RPCError) {
        guard !path.isEmpty else { throw RPCError(.invalidArgument, "\(field) is required") }
        do {
            try RequestPath.check(path, allowedRoots: settings.allowedRoots)
        } catch {
            throw RPCError(.invalidArgument, "\(field): \(error)")
        }
        // A symlink on the way could lead the mount anywhere: the real path must stay inside too.
        do {
            try RequestPath.check(MountTable.resolvingSymlinks(path), allowedRoots: settings.allowedRoots.map(MountTable.resolvingSymlinks))
        } catch {
            throw RPCError(.invalidArgument, "\(field): \"\(path)\" leads through a symbolic link to \(error)")
        }
    }

    /// A path a stats or expand call names: where no volume can be is NotFound (as csi-sanity expects).
    func checkVolumePath(_ path: String, of volumeID: String) throws(RPCError) {
        guard !path.isEmpty else { throw RPCError(.invalidArgument, "volume_path is required") }
        // Only a path that is not there is NotFound: a filesystem that shut down
        // (XFS after its disk vanished under a writer) answers stat with EIO,
        // and that is the abnormal condition to report, not a missing volume.
        guard path.hasPrefix("/"), !path.hasParentReference, !DeviceFacts.isMissing(path) else {
            throw RPCError(.notFound, "volume \(volumeID) is not at volume_path \"\(path)\": no such absolute path")
        }
        try checkPath(path, field: "volume_path")
    }

    func checkCapability(_ request: Csi_V1_VolumeCapability, present: Bool) throws(RPCError) {
        guard present else { throw RPCError(.invalidArgument, "volume_capability is required") }
        if let problem = CapabilityCheck.problem(with: request) {
            throw RPCError(.invalidArgument, "volume_capability: \(problem)")
        }
    }

    /// Whether the access mode only reads: then nothing is formatted or written.
    static func readsOnly(_ capability: Csi_V1_VolumeCapability) -> Bool {
        [.singleNodeReaderOnly, .multiNodeReaderOnly].contains(capability.accessMode.mode)
    }

    /// The disk for `volume` on this VM, waiting for its hot-plug up to `timeout`.
    func device(of volume: NodeVolume, timeout: Double) async throws -> (path: String, number: String) {
        guard let path = try await finder.waitFor(serial: volume.serial, wwn: volume.wwn, scsiLUN: volume.scsiLUN, timeout: timeout) else {
            throw RPCError(.notFound, "volume \(volume.id): no disk with serial \(volume.serial)"
                + (volume.wwn.map { " or WWN \($0)" } ?? "") + " appeared on this VM within \(Int(timeout)) s "
                + "(looked in \(settings.sysRoot)/block/*/serial, device/vpd_pg80, device/wwid and \(settings.devRoot)/disk/by-id); "
                + "is the volume attached to this node's VM?")
        }
        guard let number = DeviceFacts.blockDeviceNumber(path) else {
            throw RPCError(.internal, "volume \(volume.id): \(path) is not a block device")
        }
        return (path, number)
    }
}
