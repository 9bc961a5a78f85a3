import Foundation

/// Finds the block device that carries a disk's identity, the way the guest
/// kernel exposes it (see shared GUEST-DEVICES.md), without udev:
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

    /// The device node of the disk with this serial (or WWN), if present now.
    public func find(serial: String, wwn: String? = nil) -> String? {
        let block = sysRoot + "/block"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: block))?.sorted() ?? []
        let wantedWWID = wwn.map { "naa." + $0.lowercased().replacingOccurrences(of: "0x", with: "") }
        for name in names {
            let entry = block + "/" + name
            if read(entry + "/serial") == serial { return devRoot + "/" + name }
            if let page = try? Data(contentsOf: URL(fileURLWithPath: entry + "/device/vpd_pg80")), page.count > 4,
               Self.serial(fromVPD80: Array(page)) == serial {
                return devRoot + "/" + name
            }
            if let wantedWWID, read(entry + "/device/wwid")?.lowercased() == wantedWWID { return devRoot + "/" + name }
        }
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

    /// The serial in a VPD page 0x80 (Unit Serial Number): header 00 80 00 LEN.
    static func serial(fromVPD80 page: [UInt8]) -> String? {
        guard page.count >= 4, page[1] == 0x80 else { return nil }
        let length = min(Int(page[3]), page.count - 4)
        return String(decoding: page[4..<(4 + length)], as: UTF8.self).trimmingCharacters(in: .whitespaces.union(.controlCharacters))
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
