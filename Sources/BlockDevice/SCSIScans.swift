#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import Synchronization

/// Scans of one LUN on the guest's virtio-scsi hosts, for a hot-plug event
/// the kernel missed. Never a wildcard: `- - -` on a host that holds only
/// LUN 0 took about 10 s in a Debian 6.1 guest and held the host's scan
/// mutex throughout, so a disk plugged meanwhile appeared only after it.
/// qemu-server puts every disk at channel 0, target 0, LUN = the slot's
/// index (print_drivedevice_full), so the LUN names the disk.
final class SCSIScans: Sendable {
    let sysRoot: String
    /// Hosts with a scan under way: a host gets one at a time.
    private let scanning = Mutex<Set<String>>([])

    init(sysRoot: String) {
        self.sysRoot = sysRoot
    }

    /// Starts a scan of `lun` on every virtio-scsi host that is not scanning
    /// already, each on a thread of its own, and returns at once.
    func request(lun: Int) {
        for host in virtioSCSIHosts() where scanning.withLock({ $0.insert(host).inserted }) {
            OwnedThread.start { [self] in
                Self.write("0 0 \(lun)", to: sysRoot + "/class/scsi_host/" + host + "/scan")
                _ = scanning.withLock { $0.remove(host) }
            }
        }
    }

    /// The SCSI hosts virtio-scsi drives (`proc_name`), by name.
    func virtioSCSIHosts() -> [String] {
        let hosts = sysRoot + "/class/scsi_host"
        return ((try? FileManager.default.contentsOfDirectory(atPath: hosts)) ?? []).sorted().filter {
            KernelFile.value(hosts + "/" + $0 + "/proc_name") == "virtio_scsi"
        }
    }

    /// One write(2) of `text` to a sysfs attribute; a failure only means no scan.
    static func write(_ text: String, to path: String) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
    }
}
