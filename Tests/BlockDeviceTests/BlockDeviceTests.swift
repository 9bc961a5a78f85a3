@testable import BlockDevice
import Foundation
import Testing
import TextSupport

func scratch(_ name: String) throws -> String {
    let path = NSTemporaryDirectory() + "blockdevice-\(name)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func shell(_ arguments: [String]) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw ProbeSetupError(command: arguments.joined(separator: " ")) }
}

struct ProbeSetupError: Error { let command: String }

func sparseFile(_ path: String, bytes: Int64) throws {
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    try handle.truncate(atOffset: UInt64(bytes))
    try handle.close()
}

@Suite struct DeviceFinderTests {
    /// A sysfs tree shaped as GUEST-DEVICES.md describes.
    func tree() throws -> String {
        let root = try scratch("sys")
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/block/vda", withIntermediateDirectories: true)
        try "pvc-abc123def4567890\n".write(toFile: root + "/block/vda/serial", atomically: true, encoding: .utf8)
        try fm.createDirectory(atPath: root + "/block/sda/device", withIntermediateDirectories: true)
        let serial = Array("pvc-scsi-serial-0001".utf8)
        try Data([0x00, 0x80, 0x00, UInt8(serial.count)] + serial).write(to: URL(fileURLWithPath: root + "/block/sda/device/vpd_pg80"))
        try "naa.5056432d49443031\n".write(toFile: root + "/block/sda/device/wwid", atomically: true, encoding: .utf8)
        try fm.createDirectory(atPath: root + "/block/sdb/device", withIntermediateDirectories: true)
        try "naa.5056432d49443099\n".write(toFile: root + "/block/sdb/device/wwid", atomically: true, encoding: .utf8)
        return root
    }

    @Test func findsVirtioBlkBySerialScsiByVPDAndByWWN() throws {
        let finder = DeviceFinder(sysRoot: try tree(), devRoot: "/dev")
        #expect(finder.find(serial: "pvc-abc123def4567890") == "/dev/vda")
        #expect(finder.find(serial: "pvc-scsi-serial-0001") == "/dev/sda")
        #expect(finder.find(serial: "not-this-one", wwn: "0x5056432D49443099") == "/dev/sdb")
        #expect(finder.find(serial: "absent") == nil)
    }

    @Test func findsUdevLinksWhenThereAreSome() throws {
        let dev = try scratch("dev")
        try FileManager.default.createDirectory(atPath: dev + "/disk/by-id", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dev + "/disk/by-id/virtio-csi-0000000000000001", withDestinationPath: "../../vdc")
        let finder = DeviceFinder(sysRoot: try scratch("empty-sys"), devRoot: dev)
        #expect(finder.find(serial: "csi-0000000000000001") == dev + "/vdc")
    }

    @Test func waitsBoundedForAHotPluggedDisk() async throws {
        let root = try tree()
        let finder = DeviceFinder(sysRoot: root)
        // A disk that never comes: the wait ends (its timeout) and reports absence.
        #expect(try await finder.waitFor(serial: "never", timeout: 0.3, pollInterval: 0.05) == nil)
        // The disk shows up while we wait.
        Task {
            try await Task.sleep(nanoseconds: 150_000_000)
            try FileManager.default.createDirectory(atPath: root + "/block/vdb", withIntermediateDirectories: true)
            try "late-disk\n".write(toFile: root + "/block/vdb/serial", atomically: true, encoding: .utf8)
        }
        #expect(try await finder.waitFor(serial: "late-disk", timeout: 5, pollInterval: 0.05) == "/dev/vdb")
    }

    @Test func vpdPagesAreParsedByTheirLength() {
        #expect(DeviceFinder.serial(fromVPD80: [0, 0x80, 0, 3] + Array("abcdef".utf8)) == "abc")
        #expect(DeviceFinder.serial(fromVPD80: [0, 0x83, 0, 3] + Array("abc".utf8)) == nil)
    }
}

@Suite struct BlockProbeTests {
    @Test func zeroedDeviceIsBlank() throws {
        let file = try scratch("probe") + "/blank.img"
        try sparseFile(file, bytes: 64 << 20)
        #expect(try BlockProbe.probe(file) == ProbeResult(type: nil, partitionTable: nil))
        #expect(try BlockProbe.probe(file).isBlank)
    }

    @Test(arguments: [("ext4", ["mkfs.ext4", "-q", "-F"]), ("xfs", ["mkfs.xfs", "-q", "-f"])])
    func filesystemsAreRecognised(type: String, mkfs: [String]) throws {
        let file = try scratch("probe") + "/\(type).img"
        try sparseFile(file, bytes: 320 << 20)
        try shell(mkfs + [file])
        let result = try BlockProbe.probe(file)
        #expect(result.type == type && !result.isBlank)
    }

    @Test func partitionTableIsNotBlank() throws {
        let file = try scratch("probe") + "/gpt.img"
        try sparseFile(file, bytes: 64 << 20)
        let script = try scratch("sfdisk") + "/layout"
        try "label: gpt\n,,L\n".write(toFile: script, atomically: true, encoding: .utf8)
        try shell(["sh", "-c", "sfdisk --quiet '\(file)' < '\(script)'"])
        let result = try BlockProbe.probe(file)
        #expect(result.partitionTable == "gpt" && !result.isBlank)
    }

    @Test func missingDeviceIsAnError() {
        #expect(throws: BlockProbe.Failure.self) { try BlockProbe.probe("/nonexistent/disk") }
    }
}

@Suite struct MountTableTests {
    @Test func parsesMountinfoWithEscapesAndOptionalFields() {
        let text = """
        36 35 98:0 /mnt1 /mnt/my\\040volume rw,noatime master:1 - ext4 /dev/vdb rw,errors=continue
        40 22 0:41 / /var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pvc/mount ro,relatime shared:5 - xfs /dev/sda ro,nouuid
        """
        let entries = MountTable.parse(text)
        #expect(entries.count == 2)
        #expect(entries[0] == MountEntry(mountPoint: "/mnt/my volume", source: "/dev/vdb", fsType: "ext4", options: ["rw", "noatime"], device: "98:0",
                                          superOptions: ["rw", "errors=continue"]))
        #expect(MountTable.mount(at: "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pvc/mount", in: entries)?.fsType == "xfs")
    }

    @Test func readsThisProcesssTable() throws {
        #expect(try MountTable.read().contains { $0.mountPoint == "/" })
    }

    /// The byte scan against the split-based parser it replaced, on this machine's
    /// table and on lines with escapes, several optional fields, no superoptions,
    /// runs of spaces, blank lines and lines too short to be entries.
    @Test func theByteScanReadsWhatSplittingDid() throws {
        func bySplitting(_ text: String) -> [MountEntry] {
            text.split(separator: "\n").compactMap { line in
                let fields = line.split(separator: " ").map(String.init)
                guard fields.count >= 10, let separator = fields.firstIndex(of: "-"), separator + 2 < fields.count else { return nil }
                func unescape(_ field: String) -> String {
                    var out = [UInt8](), bytes = Array(field.utf8), i = 0
                    while i < bytes.count {
                        if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
                           let value = UInt8(String(decoding: bytes[i + 1...i + 3], as: UTF8.self), radix: 8) {
                            out.append(value)
                            i += 4
                        } else {
                            out.append(bytes[i])
                            i += 1
                        }
                    }
                    return String(decoding: out, as: UTF8.self)
                }
                return MountEntry(mountPoint: unescape(fields[4]), source: unescape(fields[separator + 2]), fsType: fields[separator + 1],
                                  options: fields[5].split(separator: ",").map(String.init), device: fields[2],
                                  superOptions: separator + 3 < fields.count ? fields[separator + 3].split(separator: ",").map(String.init) : [])
            }
        }
        let made = """
        36 35 98:0 /mnt1 /mnt/my\\040volume\\011tab rw,noatime master:1 shared:7 propagate_from:2 - ext4 /dev/vdb rw,errors=continue

        41 22 0:42 / /a\\134b  ro,,relatime shared:3 - tmpfs tmpfs
        42 22 0:43 / /odd\\9x rw - xfs /dev/my\\040disk rw
        43 22 0:44 / /short rw - xfs
        44 22 0:45 / /end\\04 rw - xfs /dev/sdz rw
        """
        for text in [made, try KernelFile.text("/proc/self/mountinfo")] {
            let entries = MountTable.parse(text)
            #expect(entries == bySplitting(text))
            #expect(!entries.isEmpty)
        }
        #expect(MountTable.parse(made).map(\.mountPoint) == ["/mnt/my volume\ttab", "/a\\b", "/odd\\9x", "/end\\04"])
    }
}

@Suite struct RequestPathTests {
    @Test(arguments: ["relative/path", "/var/lib/kubelet/../etc", "/etc/passwd"])
    func refuses(_ path: String) {
        #expect(throws: RequestPath.Problem.self) { try RequestPath.check(path, allowedRoots: ["/var/lib/kubelet"]) }
    }

    @Test func acceptsPathsInsideTheRoots() throws {
        try RequestPath.check("/var/lib/kubelet/plugins/x/globalmount", allowedRoots: ["/var/lib/kubelet"])
        try RequestPath.check("/anything/absolute")
    }

    /// The byte scan against what it replaced: a `..` component among the `/`-separated parts.
    @Test func aParentReferenceIsAComponentOfExactlyTwoDots() {
        var paths = [""]
        for _ in 0..<5 { paths = paths + paths.flatMap { path in ["/", ".", "a"].map { path + $0 } } }
        for path in Set(paths + ["/a/../b", "/a/..", "..", "/...", "/..a", "/a..", "/.../", "/a/./b", "/\u{e9}../.."]) {
            #expect(path.hasParentReference == path.split(separator: "/").contains(".."), "\(path)")
        }
    }
}

@Suite struct ProcessRunnerTests {
    @Test func runsSystemToolsAndReportsTheirOutput() async throws {
        let result = try await ProcessRunner().run("sh", ["-c", "echo out; echo err >&2; exit 3"], timeout: 30)
        #expect(result.status == 3 && result.output.contains("out") && result.output.contains("err"))
    }

    @Test func aToolStartsWithNoInputDefaultSignalsAndTheCLocale() throws {
        // Block and ignore here what the driver blocks and ignores, then spawn from this thread.
        var blocked = sigset_t(), previous = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        let oldPipe = signal(SIGPIPE, SIG_IGN)
        defer {
            pthread_sigmask(SIG_SETMASK, &previous, nil)
            signal(SIGPIPE, oldPipe)
        }
        let result = try ProcessRunner.spawnAndWait("/bin/sh", ["-c", "cat; echo \"locale=$LC_ALL\"; grep -E '^Sig(Blk|Ign)' /proc/self/status"], timeout: 30)
        #expect(result.succeeded)
        #expect(result.output.hasPrefix("locale=C\n"))
        // Nothing blocked (the driver blocks SIGTERM for sigwait), SIGPIPE (13) not ignored.
        #expect(result.output.contains("SigBlk:\t0000000000000000"))
        let ignored = result.output.split(separator: "\n").first { $0.hasPrefix("SigIgn") }.flatMap { UInt64($0.split(separator: "\t").last!, radix: 16) }
        #expect(ignored.map { $0 & (1 << 12) == 0 } == true)
    }

    @Test func aToolInheritsNoDescriptorButItsStandardStreams() throws {
        // An inheritable descriptor, as Foundation's temporary files are: the
        // tool must not hold it (it would keep a mount busy).
        let inheritable = open("/proc/self/status", O_RDONLY)
        #expect(inheritable > 2)
        defer { close(inheritable) }
        let result = try ProcessRunner.spawnAndWait("/bin/sh", ["-c", "ls /proc/$$/fd"], timeout: 30)
        let descriptors = Set(result.output.split(separator: "\n").compactMap { Int32($0) })
        #expect(descriptors == [0, 1, 2], "\(result.output)")
    }

    @Test func aSignalledToolReportsOneHundredTwentyEightPlusTheSignal() async throws {
        #expect(try await ProcessRunner().run("sh", ["-c", "kill -TERM $$"], timeout: 30).status == 128 + 15)
    }

    @Test func aToolThatClosesItsOutputIsAwaitedToItsExit() throws {
        // Output ends at once; the exit comes 0.3 s later and its status counts.
        let result = try ProcessRunner.spawnAndWait("/bin/sh", ["-c", "exec >/dev/null 2>&1; sleep 0.3; exit 4"], timeout: 30)
        #expect(result.status == 4 && !result.timedOut)
    }

    @Test func aToolThatClosesItsOutputAndHangsIsKilledAtItsTimeout() throws {
        let started = ContinuousClock.now
        let result = try ProcessRunner.spawnAndWait("/bin/sh", ["-c", "exec >/dev/null 2>&1; sleep 30"], timeout: 1)
        #expect(result.timedOut && result.status == 128 + SIGKILL)
        #expect(ContinuousClock.now - started < .seconds(10))
    }

    @Test func aToolOutsideTheSystemDirectoriesIsNotRun() async throws {
        let result = try await ProcessRunner().run("no-such-tool-xyz", [], timeout: 30)
        #expect(result.status == 127 && result.output.contains("not found in /usr/sbin:/usr/bin:/sbin:/bin"))
    }
}
