/// The two buses a volume can be attached on, with qemu-server's slot
/// counts (PVE/QemuServer/Drive.pm: MAX_SCSI_DISKS 31, MAX_VIRTIO_DISKS 16).
enum DiskBus: String, Sendable, CaseIterable {
    case scsi, virtio

    var slotCount: Int { self == .scsi ? 31 : 16 }

    /// The config keys of its slots, in order: scsi0 … scsi30.
    var slots: [String] { (0..<slotCount).map { "\(rawValue)\($0)" } }
}

/// A Proxmox volume id, `<storage>:<volume>` (`<storage>:<vmid>/<file>` on
/// file storages), pve-storage PVE/Storage.pm parse_volume_id.
enum Volid {
    static func storage(of volid: String) -> String {
        String(volid.split(separator: ":", maxSplits: 1).first ?? "")
    }

    /// The volume's own name: the part after the storage, without a file storage's `<vmid>/`.
    static func volumeName(of volid: String) -> String {
        String(volid.split(separator: ":", maxSplits: 1).dropFirst().first?.split(separator: "/").last ?? "")
    }
}

extension StorageRef {
    /// The node that serves `handle`: its own for local storage; for shared
    /// storage the first (by name) that has it, so every caller picks the same one.
    func node(for handle: VolumeHandle) -> String {
        handle.node ?? anyNode
    }

    var anyNode: String { available.keys.sorted().first ?? "" }
}

extension VolumeHandle {
    /// Where the volume can be used: the cluster, and the node for local storage.
    var topologySegments: [String: String] {
        node.map { [TopologyKey.region: cluster, TopologyKey.zone: $0] } ?? [TopologyKey.region: cluster]
    }
}
