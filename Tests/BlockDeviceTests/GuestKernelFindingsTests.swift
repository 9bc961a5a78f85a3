@testable import BlockDevice
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing

// What a real guest kernel showed that the sysfs tree of our belief did not
// (issue 12): each pinned here without a guest, on files that behave the
// way the kernel's do.

@Suite(.serialized) struct GuestKernelFindingsTests {
    /// A sysfs tree with two SCSI hosts whose `scan` files are FIFOs: a write
    /// to one blocks until someone reads, as a scan of a host blocks for as
    /// long as the kernel scans.
    func scsiHosts() throws -> String {
        let root = try scratch("scsi-hosts")
        for (host, driver) in [("host0", "virtio_scsi"), ("host1", "ahci")] {
            let dir = root + "/class/scsi_host/" + host
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try (driver + "\n").write(toFile: dir + "/proc_name", atomically: true, encoding: .utf8)
            #expect(mkfifo(dir + "/scan", 0o600) == 0)
        }
        try FileManager.default.createDirectory(atPath: root + "/block", withIntermediateDirectories: true)
        return root
    }

    /// What was written to a FIFO `scan` file, reading for up to `seconds`
    /// (sleeping between reads, never blocking a thread of the pool).
    func written(to path: String, seconds: Double) async throws -> String {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return "open failed" }
        defer { close(fd) }
        let end = ContinuousClock.now + .seconds(seconds)
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 256)
        while ContinuousClock.now < end {
            let count = read(fd, &buffer, buffer.count)
            if count > 0 { bytes += buffer[0..<count] } else if count == 0, !bytes.isEmpty { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func aMissedSCSIHotPlugIsScannedForItsLUNOnlyAndTheWaitNeverBlocksOnTheScan() async throws {
        let root = try scsiHosts()
        let finder = DeviceFinder(sysRoot: root)
        #expect(finder.scans.virtioSCSIHosts() == ["host0"])
        // The scan of host0 blocks (nobody reads its FIFO), yet the wait ends at its deadline.
        let found = try await finder.waitFor(serial: "csi-never", scsiLUN: 3, timeout: 0.5, rescanAfter: 0.1, pollInterval: 0.05)
        #expect(found == nil)
        // Exactly the volume's LUN on the virtio-scsi host, never a wildcard, and nothing on another driver's host.
        #expect(try await written(to: root + "/class/scsi_host/host0/scan", seconds: 5) == "0 0 3")
        #expect(try await written(to: root + "/class/scsi_host/host1/scan", seconds: 0.2) == "")
    }

    @Test func aVirtioBlkDiskIsNeverScannedFor() async throws {
        let root = try scsiHosts()
        let finder = DeviceFinder(sysRoot: root)
        #expect(try await finder.waitFor(serial: "csi-never", timeout: 0.4, rescanAfter: 0, pollInterval: 0.05) == nil)
        #expect(try await written(to: root + "/class/scsi_host/host0/scan", seconds: 0.3) == "")
    }

    @Test func aHostStillScanningIsNotAskedAgain() async throws {
        let root = try scsiHosts()
        let finder = DeviceFinder(sysRoot: root)
        for lun in [4, 5] {
            _ = try await finder.waitFor(serial: "csi-never", scsiLUN: lun, timeout: 0.3, rescanAfter: 0, pollInterval: 0.05)
        }
        // The second wait found host0 still scanning LUN 4 and left it alone.
        #expect(try await written(to: root + "/class/scsi_host/host0/scan", seconds: 5) == "0 0 4")
    }

    @Test func aLUNWhoseScanWasSkippedIsAskedForAgain() async throws {
        let root = try scsiHosts()
        let finder = DeviceFinder(sysRoot: root)
        let scan = root + "/class/scsi_host/host0/scan"
        _ = try await finder.waitFor(serial: "csi-never", scsiLUN: 4, timeout: 0.2, rescanAfter: 0, pollInterval: 0.05)
        // host0 is busy with LUN 4 when LUN 5 first asks; LUN 5 asks again once it is free.
        let second = Task {
            try await finder.waitFor(serial: "csi-never", scsiLUN: 5, timeout: 4, rescanAfter: 0, rescanEvery: 0.2, pollInterval: 0.05)
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await written(to: scan, seconds: 5) == "0 0 4")
        #expect(try await written(to: scan, seconds: 5) == "0 0 5")
        _ = try await second.value
    }

    @Test func aToolThatClosesItsOutputAndHangsIsKilledToo() async throws {
        let result = try await ProcessRunner().run("sh", ["-c", "exec >&- 2>&-; exec sleep 60"], timeout: 0.5)
        #expect(result.timedOut && result.status == 128 + SIGKILL)
    }

    @Test func procfsFilesAreReadToTheirEnd() throws {
        // /proc/self/mountinfo reports size 0; its text is whatever read(2) gives until EOF.
        let text = try KernelFile.text("/proc/self/mountinfo")
        #expect(text.hasSuffix("\n") && MountTable.parse(text).contains { $0.mountPoint == "/" })
        let status = try KernelFile.text("/proc/self/status")
        #expect(status.contains("\nVmRSS:") || status.contains("\nThreads:"))
    }

    @Test func aToolPastItsTimeLimitIsKilledAndTheCallerGoesOn() async throws {
        let result = try await ProcessRunner().run("sh", ["-c", "echo started; exec sleep 60"], timeout: 0.5)
        #expect(result.timedOut && result.status == 128 + SIGKILL)
        #expect(result.output.contains("started") && result.output.contains("killed: no result within"))
    }

    @Test func aToolWithinItsTimeLimitIsNotTimedOut() async throws {
        let result = try await ProcessRunner().run("sh", ["-c", "exit 4"], timeout: 30)
        #expect(!result.timedOut && result.status == 4)
    }

    @Test func aPartitionIsPresentButNoVolumesDisk() throws {
        // The kernel's layout: <sys>/dev/block/MAJ:MIN links into the disk's directory; a partition has a `partition` file.
        let root = try scratch("partition-sys")
        try FileManager.default.createDirectory(atPath: root + "/block/sda/sda1", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/dev/block", withIntermediateDirectories: true)
        try "1\n".write(toFile: root + "/block/sda/sda1/partition", atomically: true, encoding: .utf8)
        try "8:0\n".write(toFile: root + "/block/sda/dev", atomically: true, encoding: .utf8)
        try "csi-0000000000000001\n".write(toFile: root + "/block/sda/serial", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: root + "/dev/block/8:1", withDestinationPath: "../../block/sda/sda1")
        let finder = DeviceFinder(sysRoot: root)
        let partition = try #require(finder.disk(number: "8:1"))
        #expect(partition.name == "sda1" && partition.partitionOf == "sda")
        #expect(!partition.matches(serial: "csi-0000000000000001", wwn: nil))
        #expect(finder.disk(number: "8:0")?.name == "sda")
        #expect(finder.disk(number: "8:2") == nil)
    }
}
