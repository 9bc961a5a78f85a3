import CSIProto
import ProxmoxDomain
import UnaryGRPC

/// What a StorageClass asks for, validated: the storage (directly or through
/// a profile of the config) and the disk options. Profile values are
/// defaults; keys given in the StorageClass win. The keys are
/// proxmox-csi-plugin's (its pkg/csi/parameters.go), with its meaning, so a
/// class written for it works unchanged; `profile` and `bus` are ours.
public struct VolumeParameters: Sendable, Equatable {
    public var storage: String
    public var profile: String?
    public var fsType: String = "ext4"
    /// The plugin's defaults, then the profile's options, then the StorageClass's own.
    public var disk = Self.defaultDisk
    public var bus: String { disk.bus ?? "scsi" }
    public var blockSize: Int?
    public var inodeSize: Int?
    /// `raw` or `qcow2`: the image format on file storages (dir, nfs, …);
    /// block storages have raw volumes only, and ignore it (as the plugin does).
    public var storageFormat: String?
    /// A size the plugin still owed a volume it restored smaller than asked
    /// (its volume context `resizeSizeBytes`): publish grows the disk to it.
    public var resizeSizeBytes: Int64?

    /// Keys the CSI sidecars add on their own; never an error.
    static let sidecarPrefix = "csi.storage.k8s.io/"
    static let fsTypeKey = "csi.storage.k8s.io/fstype"

    /// The plugin's ExtractParameters defaults: no Proxmox backup of CSI disks
    /// (a VM backup would copy every pod's data), an I/O thread per disk.
    public static let defaultDisk = DiskOptions(iothread: true, backup: false)

    public static let knownKeys: Set<String> = [
        "storage", "profile", fsTypeKey, "bus", "cache", "ssd", "discard", "iothread", "backup",
        "diskIOPS", "diskMBps", "blockSize", "inodeSize", "aio", "storageFormat",
        "replicate", "replicateSchedule", "replicateZones", "resizeRequired", "resizeSizeBytes",
    ]

    /// What a VolumeAttributesClass may change after creation.
    public static let mutableKeys: Set<String> = Set(diskOptionNames.keys)

    /// The options of the Proxmox disk line each mutable key sets.
    public static let diskOptionNames: [String: [String]] = [
        "diskIOPS": ["iops_rd", "iops_wr"], "diskMBps": ["mbps_rd", "mbps_wr"], "backup": ["backup"], "cache": ["cache"],
    ]

    /// Checks mutable parameters (CreateVolume's or ControllerModifyVolume's):
    /// only `mutableKeys`, with valid values; InvalidArgument naming the key.
    public static func checkMutable(_ parameters: [String: String], config: DriverConfig, cluster: String) throws(RPCError) {
        for key in ["replicateSchedule", "replicateZones"] where parameters[key] != nil {
            throw RPCError(.invalidArgument, "mutable parameter \"\(key)\" is not supported: this driver does not replicate volumes "
                + "(see the StorageClass parameter \"replicate\")")
        }
        for key in parameters.keys.sorted() where !mutableKeys.contains(key) {
            throw RPCError(.invalidArgument, "mutable parameter \"\(key)\" is not supported; a VolumeAttributesClass may set \(mutableKeys.sorted().joined(separator: ", "))")
        }
        _ = try parse(parameters.merging(["storage": "placeholder"]) { a, _ in a }, config: config, cluster: cluster)
    }

    /// Reads `parameters` for `cluster`; errors are InvalidArgument naming the key.
    public static func parse(_ parameters: [String: String], config: DriverConfig, cluster: String) throws(RPCError) -> VolumeParameters {
        func invalid(_ key: String, _ problem: String) -> RPCError {
            RPCError(.invalidArgument, "StorageClass parameter \"\(key)\" \(problem)")
        }
        for key in parameters.keys.sorted() where !knownKeys.contains(key) && !key.hasPrefix(sidecarPrefix) {
            throw invalid(key, "is not known; known parameters: \(knownKeys.sorted().joined(separator: ", "))")
        }

        var profile: DriverConfig.Profile?
        if let name = parameters["profile"] {
            guard let found = config.profiles[name] else {
                let known = config.profiles.keys.sorted().joined(separator: ", ")
                throw invalid("profile", "names \"\(name)\", which the driver's config does not define (defined: \(known.isEmpty ? "none" : known))")
            }
            profile = found
        }
        let storage: String
        switch (parameters["storage"], profile?.storage(forCluster: cluster)) {
        case let (given?, _): storage = given
        case let (nil, fromProfile?): storage = fromProfile
        case (nil, nil):
            if profile != nil { throw invalid("profile", "names no storage for cluster \"\(cluster)\"") }
            throw RPCError(.invalidArgument, "StorageClass parameters must name a Proxmox storage (\"storage\") or a profile (\"profile\")")
        }
        guard VolumeHandle.isStorageID(storage) else { throw invalid("storage", "\"\(storage)\" is not a Proxmox storage id") }

        var result = VolumeParameters(storage: storage, profile: parameters["profile"])
        result.fsType = profile?.fsType ?? result.fsType

        func bool(_ key: String) throws(RPCError) -> Bool? {
            guard let value = parameters[key] else { return nil }
            // Go's strconv.ParseBool spellings (the plugin's: t, f, 1, 0, true, false) and ours (yes, no, on, off).
            switch value.lowercased() {
            case "true", "t", "1", "yes", "on": return true
            case "false", "f", "0", "no", "off": return false
            default: throw invalid(key, "must be true or false, not \"\(value)\"")
            }
        }
        func number(_ key: String, _ range: ClosedRange<Int>) throws(RPCError) -> Int? {
            guard let value = parameters[key] else { return nil }
            guard let parsed = Int(value), range.contains(parsed) else {
                throw invalid(key, "must be a whole number from \(range.lowerBound) to \(range.upperBound), not \"\(value)\"")
            }
            return parsed
        }
        func choice(_ key: String, _ choices: [String]) throws(RPCError) -> String? {
            guard let value = parameters[key] else { return nil }
            guard choices.contains(value) else { throw invalid(key, "must be one of \(choices.joined(separator: ", ")), not \"\(value)\"") }
            return value
        }

        result.fsType = try choice(fsTypeKey, ["xfs", "ext4"]) ?? result.fsType
        let given = DiskOptions(
            bus: try choice("bus", ["scsi", "virtio"]),
            cache: try choice("cache", ["none", "writethrough", "writeback", "directsync", "unsafe"]),
            ssd: try bool("ssd"), discard: try bool("discard"), iothread: try bool("iothread"), backup: try bool("backup"),
            iops: try number("diskIOPS", 1...10_000_000), mbps: try number("diskMBps", 1...100_000),
            aio: try choice("aio", ["native", "threads", "io_uring"]))
        result.disk = Self.defaultDisk.overridden(by: profile?.disk ?? DiskOptions()).overridden(by: given)
        // The plugin passes discards through on every ssd disk unless told otherwise.
        if result.disk.ssd == true, result.disk.discard == nil { result.disk.discard = true }
        // qemu-server Drive.pm: the virtio drive format has no ssd key (scsi, sata and ide have).
        if result.bus == "virtio", result.disk.ssd == true {
            throw invalid("ssd", "cannot be true with bus virtio: Proxmox's virtio-blk disks have no ssd option (use bus scsi)")
        }
        // qemu-server Drive.pm aio_cmdline_option: "aio native works only with O_DIRECT", which
        // drive_uses_cache_direct gives only for cache none, directsync or unset; QEMU refuses the hot-plug otherwise.
        if result.disk.aio == "native", let cache = result.disk.cache, !["none", "directsync"].contains(cache) {
            throw invalid("aio", "native needs a direct cache (cache none or directsync), not cache \(cache): QEMU refuses native I/O through the host's page cache")
        }
        result.storageFormat = try choice("storageFormat", ["raw", "qcow2"])
        if try bool("replicate") == true {
            throw invalid("replicate", "asks for Proxmox storage replication, which this driver does not do: Proxmox replicates whole guests "
                + "(pvesr jobs for a VM's disks on zfspool storage), so each replicated volume would need a VM of its own, "
                + "migrated before every attach on another node; use a shared storage (rbd, nfs) for a volume that must follow its pods")
        }
        // replicateSchedule and replicateZones mean nothing without replicate (as in the plugin);
        // resizeRequired is the plugin's flag beside resizeSizeBytes, which carries the size.
        if let value = parameters["resizeSizeBytes"] {
            guard let bytes = Int64(value), bytes >= 0 else { throw invalid("resizeSizeBytes", "must be a whole number of bytes, not \"\(value)\"") }
            result.resizeSizeBytes = bytes > 0 ? bytes : nil
        }
        if let size = try number("blockSize", 512...65_536) {
            guard size & (size - 1) == 0 else { throw invalid("blockSize", "must be a power of two, not \"\(size)\"") }
            result.blockSize = size
        }
        if let size = try number("inodeSize", 128...8_192) {
            guard size & (size - 1) == 0 else { throw invalid("inodeSize", "must be a power of two, not \"\(size)\"") }
            result.inodeSize = size
        }
        return result
    }

    /// The image format to ask for on a storage of `type`: the class's on file
    /// storages (raw when it names none), nothing on block storages.
    public func fileFormat(on type: String) -> String? {
        VolumeNaming.isFileStorage(type) ? storageFormat ?? "raw" : nil
    }

    /// The parameters as StorageClass keys, for the volume context: publish
    /// reads them back (csi-attacher passes the context) to set disk options.
    public var context: [String: String] {
        var out = ["storage": storage, "bus": bus, Self.fsTypeKey: fsType]
        if let cache = disk.cache { out["cache"] = cache }
        if let ssd = disk.ssd { out["ssd"] = String(ssd) }
        if let discard = disk.discard { out["discard"] = String(discard) }
        if let iothread = disk.iothread { out["iothread"] = String(iothread) }
        if let backup = disk.backup { out["backup"] = String(backup) }
        if let iops = disk.iops { out["diskIOPS"] = String(iops) }
        if let mbps = disk.mbps { out["diskMBps"] = String(mbps) }
        if let blockSize { out["blockSize"] = String(blockSize) }
        if let inodeSize { out["inodeSize"] = String(inodeSize) }
        if let aio = disk.aio { out["aio"] = aio }
        if let storageFormat { out["storageFormat"] = storageFormat }
        return out
    }

    /// The options of a Proxmox disk value (`serial` and `wwn` are added by the attacher).
    public var diskOptions: [(String, String)] {
        var options: [(String, String)] = []
        if let cache = disk.cache { options.append(("cache", cache)) }
        if let discard = disk.discard { options.append(("discard", discard ? "on" : "ignore")) }
        // Only buses whose drive format has the key (never virtio: Proxmox refuses the write).
        if let ssd = disk.ssd, bus == "scsi" { options.append(("ssd", ssd ? "1" : "0")) }
        if let iothread = disk.iothread { options.append(("iothread", iothread ? "1" : "0")) }
        if let backup = disk.backup { options.append(("backup", backup ? "1" : "0")) }
        if let iops = disk.iops { options += [("iops_rd", String(iops)), ("iops_wr", String(iops))] }
        if let mbps = disk.mbps { options += [("mbps_rd", String(mbps)), ("mbps_wr", String(mbps))] }
        if let aio = disk.aio { options.append(("aio", aio)) }
        return options
    }
}

/// Which volume capabilities the driver can serve: one VM at a time (a
/// Proxmox disk is attached to one VM), as a block device or an xfs/ext4 filesystem.
public enum CapabilityCheck {
    static let supportedModes: Set<Csi_V1_VolumeCapability.AccessMode.Mode> = [
        .singleNodeWriter, .singleNodeReaderOnly, .singleNodeSingleWriter, .singleNodeMultiWriter,
    ]

    /// What every capability must carry and this one lacks, if anything.
    public static func malformation(of capability: Csi_V1_VolumeCapability) -> String? {
        guard capability.hasAccessMode, capability.accessMode.mode != .unknown else { return "access_mode is missing" }
        guard capability.accessType != nil else { return "access_type is missing (block or mount)" }
        return nil
    }

    /// Nil when supported, else why not (for ValidateVolumeCapabilities' message).
    public static func problem(with capability: Csi_V1_VolumeCapability) -> String? {
        if let malformation = malformation(of: capability) { return malformation }
        let mode = capability.accessMode.mode
        guard supportedModes.contains(mode) else {
            return "access mode \(mode) is not supported: a Proxmox disk attaches to one VM at a time"
        }
        switch capability.accessType {
        case .block?: return nil
        case let .mount(mount)?:
            guard ["", "xfs", "ext4"].contains(mount.fsType) else {
                return "fs_type \"\(mount.fsType)\" is not supported (xfs or ext4)"
            }
            return nil
        case nil: return "access_type is missing (block or mount)"
        }
    }

    /// Checks a request's capability list: InvalidArgument naming the field.
    public static func require(_ capabilities: [Csi_V1_VolumeCapability], field: String) throws(RPCError) {
        guard !capabilities.isEmpty else { throw RPCError(.invalidArgument, "\(field) is required") }
        for (index, capability) in capabilities.enumerated() {
            if let problem = problem(with: capability) {
                throw RPCError(.invalidArgument, "\(field)[\(index)]: \(problem)")
            }
        }
    }
}
