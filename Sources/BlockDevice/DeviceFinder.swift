import Foundation

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

    /// Whether this is the disk with `serial` (or, for SCSI, `wwn`).
    public func matches(serial wanted: String, wwn: String?) -> Bool {
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
    public var sysRoot: String
    /// Where device nodes are (`/dev`).
    public var devRoot: String

    public init(sysRoot: String = "/sys", devRoot: String = "/dev") {
        self.sysRoot = sysRoot
        self.devRoot = devRoot
    }

    /// Every disk under `<sys>/block`, in name order.
    public func disks() -> [DiskEntry] {
        let block = sysRoot + "/block"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: block))?.sorted() ?? []
        return names.map { entry(named: $0) }
    }

    public func entry(named name: String) -> DiskEntry {
        let path = sysRoot + "/block/" + name
        var serial = read(path + "/serial")
        if serial == nil, let page = try? Data(contentsOf: URL(fileURLWithPath: path + "/device/vpd_pg80")) {
            serial = Self.serial(fromVPD80: Array(page))
        }
        return DiskEntry(name: name, devicePath: devRoot + "/" + name, number: read(path + "/dev"),
                         serial: serial, wwid: read(path + "/device/wwid"))
    }

    /// The disk whose device number is `number` ("major:minor"); nil once it is gone.
    public func disk(number: String) -> DiskEntry? {
        disks().first { $0.number == number }
    }

    /// The device node of the disk with this serial (or WWN), if present now.
    public func find(serial: String, wwn: String? = nil) -> String? {
        if let disk = disks().first(where: { $0.matches(serial: serial, wwn: wwn) }) { return disk.devicePath }
        for link in ["virtio-" + serial] + (wwn.map { ["wwn-" + $0.lowercased()] } ?? []) {
            let path = devRoot + "/disk/by-id/" + link
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path) {
                return target.hasPrefix("/") ? target : (devRoot + "/disk/by-id/" + target as NSString).standardizingPath
            }
        }
        return nil
    }

    /// Waits up to `timeout` seconds for a hot-plugged disk to appear, asking
    /// the SCSI hosts to rescan now and then (hot-plug events can be missed).
    public func waitFor(serial: String, wwn: String? = nil, timeout: Double, pollInterval: Double = 0.1) async throws -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        var polls = 0
        while true {
            if let found = find(serial: serial, wwn: wwn) { return found }
            if Date() >= deadline { return nil }
            polls += 1
            if polls % 10 == 0 { rescanSCSIHosts() }
            try await Task.sleep(nanoseconds: UInt64(pollInterval * 1_000_000_000))
        }
    }

    /// Asks a SCSI disk to re-read its capacity (virtio-blk updates by itself).
    public func rescan(_ disk: DiskEntry) {
        let path = sysRoot + "/block/" + disk.name + "/device/rescan"
        guard FileManager.default.fileExists(atPath: path) else { return }
        try? "1".write(toFile: path, atomically: false, encoding: .utf8)
    }

    /// The serial in a VPD page 0x80 (Unit Serial Number): header 00 80 00 LEN.
    static func serial(fromVPD80 page: [UInt8]) -> String? {
        guard page.count > 4, page[1] == 0x80 else { return nil }
        let length = min(Int(page[3]), page.count - 4)
        return String(decoding: page[4..<(4 + length)], as: UTF8.self).trimmingCharacters(in: .whitespaces.union(.controlCharacters))
    }

    /// How sysfs writes a WWN: `0x5056…` becomes `naa.5056…`.
    static func wwid(ofWWN wwn: String) -> String {
        "naa." + wwn.lowercased().replacingOccurrences(of: "0x", with: "")
    }

    private func read(_ path: String) -> String? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func rescanSCSIHosts() {
        let hosts = sysRoot + "/class/scsi_host"
        for host in (try? FileManager.default.contentsOfDirectory(atPath: hosts)) ?? [] {
            try? "- - -".write(toFile: hosts + "/" + host + "/scan", atomically: false, encoding: .utf8)
        }
    }
}
