import CBlkid
#if canImport(Glibc)
import Glibc
#endif

/// What libblkid finds on a device: a filesystem, a partition table, or nothing.
public struct ProbeResult: Sendable, Equatable {
    /// Filesystem (or other superblock) type, e.g. `xfs`, `ext4`, `LVM2_member`.
    public var type: String?
    /// Partition table type, e.g. `gpt`, `dos`.
    public var partitionTable: String?
    /// The filesystem's (or LUKS2 header's) label, if it has one.
    public var label: String? = nil

    /// Blank means nothing libblkid recognises: the only state the driver formats.
    public var isBlank: Bool { type == nil && partitionTable == nil }
}

public enum BlockProbe {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The same, on a thread of its own: reading a dying disk can block, and must not block the pool.
    public static func probeOffThread(_ path: String) async throws(Failure) -> ProbeResult {
        try await OwnedThread.run { () throws(Failure) in try probe(path) }
    }

    /// Probes superblocks and partition tables (libblkid's safe probe, which
    /// reports ambiguous signatures instead of guessing).
    public static func probe(_ path: String) throws(Failure) -> ProbeResult {
        // The device is opened here, not by libblkid, so the areas it reads can be asked for first (see prefetch).
        let device = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard device >= 0 else { throw Failure(description: "cannot open \(path) for probing") }
        defer { close(device) }
        guard let probe = blkid_new_probe() else { throw Failure(description: "cannot probe \(path): out of memory") }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_set_device(probe, device, 0, 0) == 0 else {
            throw Failure(description: "cannot probe \(path): libblkid cannot read it")
        }
        let size = Int(blkid_probe_get_size(probe))
        prefetch(device, size: size)
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_set_superblocks_flags(probe, Int32(BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL))
        if ZFSLabels.areZero(device, size: size), !skipType("zfs_member", in: probe) {
            throw Failure(description: "cannot probe \(path): libblkid refused the type filter")
        }
        blkid_probe_enable_partitions(probe, 1)
        blkid_probe_set_partitions_flags(probe, Int32(BLKID_PARTS_MAGIC))
        switch blkid_do_safeprobe(probe) {
        case 0:
            return ProbeResult(type: value(probe, "TYPE"), partitionTable: value(probe, "PTTYPE"), label: value(probe, "LABEL"))
        case 1:
            return ProbeResult(type: nil, partitionTable: nil)
        case -2:
            // Several signatures that contradict each other: certainly not blank.
            return ProbeResult(type: "ambivalent", partitionTable: nil)
        default:
            throw Failure(description: "probing \(path) failed")
        }
    }

    /// The probers read some fifty small pieces of the device one after the
    /// other, each a round trip to the disk (a VM exit and a Ceph read on
    /// Proxmox). Asking for the areas they read at once, before they start,
    /// makes those reads hits in the page cache. The areas are the pages
    /// libblkid 2.38's superblock and partition probers read on a blank disk of
    /// 1, 10 and 100 GiB (strace of `blkid -p`): the first and the last 512 KiB,
    /// single pages at 512 KiB, 1, 2 and 4 MiB, and the page 3087 sectors before
    /// the end (Promise FastTrack's farthest metadata copy). Each page missed
    /// cost a synchronous read of about 0.4 ms on a loop device and more on a
    /// virtio disk; an area missed is still read when asked, only later.
    private static func prefetch(_ device: Int32, size: Int) {
        let edge = 512 << 10, page = 4096
        guard size > 2 * edge + (4 << 20) else { return }
        let promiseFastTrack = (size - 3087 * 512) & ~(page - 1)
        let areas = [(0, edge), (size - edge, edge), (promiseFastTrack, page),
                     (edge, page), (1 << 20, page), (2 << 20, page), (4 << 20, page)]
        for (offset, length) in areas {
            _ = posix_fadvise(device, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
        }
    }

    private static func skipType(_ type: String, in probe: blkid_probe) -> Bool {
        var names: [UnsafeMutablePointer<CChar>?] = [strdup(type), nil]
        defer { free(names[0]) }
        return blkid_probe_filter_superblocks_type(probe, Int32(BLKID_FLTR_NOTIN), &names) == 0
    }

    private static func value(_ probe: blkid_probe, _ name: String) -> String? {
        var data: UnsafePointer<CChar>?
        var length = 0
        guard blkid_probe_lookup_value(probe, name, &data, &length) == 0, let data else { return nil }
        return String(cString: data)
    }
}

/// Where a ZFS pool member keeps its labels: four of 256 KiB, two at the start of
/// the device and two at the end of its size rounded down to 256 KiB (OpenZFS
/// vdev_label_offset; libblkid's zfs prober reads the same four). libblkid's
/// prober is most of a probe (1.8 of 2.5 ms on a blank 1 GiB disk, CPU, not I/O);
/// a label is never all zeros, so where all four areas are, it has nothing to find
/// and is skipped. Anything else in them and it runs as before.
enum ZFSLabels {
    static let labelBytes = 256 << 10

    static func areZero(_ device: Int32, size: Int) -> Bool {
        let aligned = size & ~(labelBytes - 1)
        guard aligned >= 4 * labelBytes else { return false }
        let span = 2 * labelBytes
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: span, alignment: 4096)
        defer { buffer.deallocate() }
        for offset in [0, aligned - span] {
            guard pread(device, buffer.baseAddress, span, off_t(offset)) == span,
                  buffer.bindMemory(to: UInt64.self).allSatisfy({ $0 == 0 }) else { return false }
        }
        return true
    }
}
