/// The two buses a volume can be attached on, with qemu-server's slot
/// counts (PVE/QemuServer/Drive.pm: MAX_SCSI_DISKS 31, MAX_VIRTIO_DISKS 16).
package enum DiskBus: String, Sendable, CaseIterable {
    case scsi, virtio

    package var slotCount: Int { self == .scsi ? 31 : 16 }

    /// The config keys of its slots, in order: scsi0 … scsi30.
    package var slots: [String] { (0..<slotCount).map { "\(rawValue)\($0)" } }
}

/// The Proxmox disk options a config profile or a StorageClass can set;
/// nil is "not said". One value for both, so a profile and a class mean the same.
public struct DiskOptions: Sendable, Equatable {
    public var bus: String?
    public var cache: String?
    public var ssd: Bool?
    public var discard: Bool?
    public var iothread: Bool?
    public var backup: Bool?
    public var iops: Int?
    public var mbps: Int?
    /// QEMU's asynchronous I/O mode (native, threads, io_uring); Proxmox picks one when unset.
    public var aio: String?

    public init(bus: String? = nil, cache: String? = nil, ssd: Bool? = nil, discard: Bool? = nil, iothread: Bool? = nil,
                backup: Bool? = nil, iops: Int? = nil, mbps: Int? = nil, aio: String? = nil) {
        (self.bus, self.cache, self.ssd, self.discard) = (bus, cache, ssd, discard)
        (self.iothread, self.backup, self.iops, self.mbps, self.aio) = (iothread, backup, iops, mbps, aio)
    }

    /// These options with every one `other` says put in their place.
    package func overridden(by other: DiskOptions) -> DiskOptions {
        DiskOptions(bus: other.bus ?? bus, cache: other.cache ?? cache, ssd: other.ssd ?? ssd, discard: other.discard ?? discard,
                    iothread: other.iothread ?? iothread, backup: other.backup ?? backup, iops: other.iops ?? iops,
                    mbps: other.mbps ?? mbps, aio: other.aio ?? aio)
    }
}

/// A Proxmox volume id, `<storage>:<volume>` (`<storage>:<vmid>/<file>` on
/// file storages), pve-storage PVE/Storage.pm parse_volume_id.
package enum Volid {
    package static func storage(of volid: String) -> String {
        String(volid.split(separator: ":", maxSplits: 1).first ?? "")
    }

    /// The volume's own name: the part after the storage, without a file storage's `<vmid>/`.
    package static func volumeName(of volid: String) -> String {
        String(volid.split(separator: ":", maxSplits: 1).dropFirst().first?.split(separator: "/").last ?? "")
    }
}

extension StorageRef {
    /// The node that serves `handle`: its own for local storage; for shared
    /// storage the first (by name) that has it, so every caller picks the same one.
    package func node(for handle: VolumeHandle) -> String {
        handle.node ?? anyNode
    }

    package var anyNode: String { available.keys.sorted().first ?? "" }
}
