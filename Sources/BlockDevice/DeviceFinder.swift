import FoundationEssentials
import TextSupport

/// One disk as the guest kernel lists it under `<sys>/block`, with the
/// identity the hypervisor gave it (see shared GUEST-DEVICES.md).
public struct DiskEntry: Sendable, Equatable {
    /// The kernel's name: `sda`, `vdb`, `loop3`.
    public var name: String
    /// Its device node under the dev root.
    public var devicePath: String
    /// "major:minor", as mountinfo and stat report it.
    public var number: String?
    /// virtio-blk `serial`, or the SCSI Unit Serial Number (VPD page 0x80).
    public var serial: String?
    /// SCSI `wwid` (`naa.<wwn>`), when the disk has a WWN.
    public var wwid: String?
    /// The disk this is a partition of (`sda` for `sda1`); nil for a whole disk.
    public var partitionOf: String?
    /// For an open LUKS mapping: the disk it decrypts, whose identity it
    /// carries (a filesystem mounted from the mapping is on that disk).
    public var encrypts: String?

    /// Whether this is the disk with `serial` (or, for SCSI, `wwn`). A
    /// partition never is: a volume is a whole disk.
    public func matches(serial wanted: String, wwn: String?) -> Bool {
        guard partitionOf == nil else { return false }
        if serial == wanted { return true }
        guard let wwn, let wwid else { return false }
        return wwid.lowercased() == DeviceFinder.wwid(ofWWN: wwn)
    }
}

/// Finds the block device that carries a disk's identity, the way the guest
/// kernel exposes it, without udev:
/// - virtio-blk: `<sys>/block/<dev>/serial`
/// - virtio-scsi: `<sys>/block/<dev>/device/vpd_pg80` (4-byte header, then the serial)
///   or `<sys>/block/<dev>/device/wwid` (`naa.<wwn>`)
/// - `/dev/disk/by-id/virtio-<serial>` and `wwn-0x<wwn>` when udev made them.
public struct DeviceFinder: Sendable {
    /// Where sysfs is (`/sys`; a test tree or the simulator's local mode elsewhere).
    public let sysRoot: String
    /// Where device nodes are (`/dev`).
    public let devRoot: String
    /// Open dm-crypt mappings, which carry the identity of the disk under them.
    public let mappings: CryptMappings
    let scans: SCSIScans

    public init(sysRoot: String = "/sys", devRoot: String = "/dev", mappings: CryptMappings = CryptMappings()) {
        self.sysRoot = sysRoot
        self.devRoot = devRoot
        self.mappings = mappings
        scans = SCSIScans(sysRoot: sysRoot)
    }

    /// Every disk under `<sys>/block`, in name order.
    public func disks() -> [DiskEntry] {
        let block = sysRoot + "/block"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: block))?.sorted() ?? []
        return names.map { entry(named: $0) }
    }

    public func entry(named name: String) -> DiskEntry {
        let path = sysRoot + "/block/" + name
        var serial = KernelFile.value(path + "/serial")
        if serial == nil, let page = try? KernelFile.bytes(path + "/device/vpd_pg80") {
            serial = Self.serial(fromVPD80: page)
        }
        return DiskEntry(name: name, devicePath: devRoot + "/" + name, number: KernelFile.value(path + "/dev"),
                         serial: serial, wwid: KernelFile.value(path + "/device/wwid"))
    }

    /// The disk or partition whose device number is `number` ("major:minor");
    /// nil once it is gone. A mounted partition is present, not a vanished disk.
    /// An open LUKS mapping stands for the disk under it, with that disk's
    /// serial and WWN; nil when that disk is gone.
    public func disk(number: String) -> DiskEntry? {
        if let mapping = mappings.mapping(number: number) {
            guard let lowerNumber = mapping.lowerNumber, let lower = disks().first(where: { $0.number == lowerNumber }) else { return nil }
            return DiskEntry(name: mapping.kernelName, devicePath: devRoot + "/mapper/" + mapping.name, number: mapping.number,
                             serial: lower.serial, wwid: lower.wwid, partitionOf: lower.partitionOf, encrypts: lower.name)
        }
        return disks().first { $0.number == number } ?? partition(number: number)
    }

    /// `<sys>/dev/block/MAJ:MIN` links to every block device, partitions
    /// included: `…/block/sda/sda1`, whose parent directory is its disk.
    func partition(number: String) -> DiskEntry? {
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: sysRoot + "/dev/block/" + number) else {
            return nil
        }
        let parts = target.split(separator: "/")
        guard parts.count >= 2, FileManager.default.fileExists(atPath: sysRoot + "/dev/block/" + number + "/partition") else {
            return nil
        }
        let name = String(parts[parts.count - 1])
        return DiskEntry(name: name, devicePath: devRoot + "/" + name, number: number, serial: nil, wwid: nil,
                         partitionOf: String(parts[parts.count - 2]))
    }

    /// The device node of the disk with this serial (or WWN), if present now.
    public func find(serial: String, wwn: String? = nil) -> String? {
        if let disk = disks().first(where: { $0.matches(serial: serial, wwn: wwn) }) { return disk.devicePath }
        for link in ["virtio-" + serial] + (wwn.map { ["wwn-" + $0.lowercased()] } ?? []) {
            let path = devRoot + "/disk/by-id/" + link
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path) {
                return target.hasPrefix("/") ? target : (devRoot + "/disk/by-id/" + target).standardizedPath
            }
        }
        return nil
    }

    /// Waits up to `timeout` seconds for a hot-plugged disk to appear. The
    /// guest kernel adds it on the hot-plug event (virtio-blk, and
    /// virtio-scsi's transport-reset event); when the disk is a SCSI LUN
    /// that has not shown up after `rescanAfter` seconds, a scan of that
    /// LUN is asked for, off the caller's thread, and again every
    /// `rescanEvery` seconds (a host busy scanning another LUN skips a
    /// request); the wait goes on polling and never waits for a scan.
    public func waitFor(serial: String, wwn: String? = nil, scsiLUN: Int? = nil, timeout: Double,
                        rescanAfter: Double = 3, rescanEvery: Double = 5, pollInterval: Double = 0.1) async throws -> String? {
        let start = ContinuousClock.now
        var nextScan = Duration.seconds(rescanAfter)
        while true {
            if let found = find(serial: serial, wwn: wwn) { return found }
            let waited = start.duration(to: .now)
            if let scsiLUN, waited >= nextScan {
                nextScan = waited + .seconds(rescanEvery)
                scans.request(lun: scsiLUN)
            }
            if waited >= .seconds(timeout) { return nil }
            try await Task.sleep(for: .seconds(pollInterval))
        }
    }

    /// Asks a SCSI disk to re-read its capacity (virtio-blk updates by
    /// itself), on a thread of its own: the write returns once the disk answered.
    public func rescan(_ disk: DiskEntry) async {
        let path = sysRoot + "/block/" + (disk.encrypts ?? disk.name) + "/device/rescan"
        guard FileManager.default.fileExists(atPath: path) else { return }
        await OwnedThread.run { SCSIScans.write("1", to: path) }
    }

    /// The serial in a VPD page 0x80 (Unit Serial Number): header 00 80 00 LEN.
    static func serial(fromVPD80 page: [UInt8]) -> String? {
        guard page.count > 4, page[1] == 0x80 else { return nil }
        let length = min(Int(page[3]), page.count - 4)
        return String(decoding: page[4..<(4 + length)], as: UTF8.self).trimmed(while: \.isBlankOrControl)
    }

    /// How sysfs writes a WWN: `0x5056…` becomes `naa.5056…`.
    static func wwid(ofWWN wwn: String) -> String {
        "naa." + wwn.lowercased().replacing("0x", with: "")
    }

}
