#if canImport(Glibc)
import Glibc
#endif
import CLinux

/// How full a mounted filesystem is (statvfs).
public struct FilesystemUsage: Sendable, Equatable {
    public var totalBytes: Int64
    public var availableBytes: Int64
    public var usedBytes: Int64
    public var totalInodes: Int64
    public var freeInodes: Int64
    public var usedInodes: Int64
    /// statvfs's ST_RDONLY: the mount or the filesystem itself is read-only.
    public var readOnly: Bool = false
}

/// Sizes and numbers the kernel reports for filesystems and device nodes.
public enum DeviceFacts {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        /// The errno behind it: EIO tells a failing disk from a missing path.
        public let code: Int32
    }

    public static func usage(at path: String) throws(Failure) -> FilesystemUsage {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { throw failure("statvfs \(path)") }
        let unit = Int64(info.f_frsize)
        return FilesystemUsage(
            totalBytes: Int64(info.f_blocks) * unit, availableBytes: Int64(info.f_bavail) * unit,
            usedBytes: Int64(info.f_blocks - info.f_bfree) * unit,
            totalInodes: Int64(info.f_files), freeInodes: Int64(info.f_ffree), usedInodes: Int64(info.f_files - info.f_ffree),
            readOnly: info.f_flag & UInt(ST_RDONLY) != 0)
    }

    /// Whether stat of `path` fails for a reason other than its absence:
    /// XFS answers EIO for every inode once it has shut down.
    public static func statFailure(_ path: String) -> Failure? {
        var info = stat()
        guard stat(path, &info) != 0 else { return nil }
        return failure("stat \(path)")
    }

    /// Errors an ext4 filesystem has recorded in its superblock, from the
    /// kernel's counter (`/sys/fs/ext4/<device>/errors_count`). Since 5.11
    /// an error under errors=remount-ro stops writes without setting the
    /// read-only flag, so neither mountinfo nor statvfs shows it.
    public static func ext4Errors(device name: String, sysRoot: String = "/sys") -> Int? {
        KernelFile.value(sysRoot + "/fs/ext4/" + name + "/errors_count").flatMap { Int($0) }
    }

    /// The size of the block device at `path` (a device node, or a file a device is bound onto).
    public static func blockDeviceBytes(_ path: String) throws(Failure) -> Int64 {
        var bytes: UInt64 = 0
        try ioctl(path, "reading the size of \(path)") { CLinux_block_device_bytes($0, &bytes) }
        return Int64(bytes)
    }

    /// Sets or clears the kernel's read-only flag of the block device at
    /// `path`. A read-only bind of a device node still lets a process open
    /// the device for writing (the mount flag guards files, not devices):
    /// this flag is what makes the device refuse writes.
    public static func setBlockDeviceReadOnly(_ path: String, _ readonly: Bool) throws(Failure) {
        try ioctl(path, "setting \(path) read-\(readonly ? "only" : "write")") { CLinux_block_set_readonly($0, readonly ? 1 : 0) }
    }

    public static func isBlockDeviceReadOnly(_ path: String) throws(Failure) -> Bool {
        var readonly: Int32 = 0
        try ioctl(path, "reading the read-only flag of \(path)") { CLinux_block_readonly($0, &readonly) }
        return readonly != 0
    }

    /// Opens `path` read-only for one ioctl (`call` returns its result).
    private static func ioctl(_ path: String, _ what: String, _ call: (Int32) -> Int32) throws(Failure) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw failure("open \(path)") }
        defer { close(fd) }
        guard call(fd) == 0 else { throw failure(what) }
    }

    /// Whether nothing is at `path` (ENOENT, ENOTDIR); a path that exists but
    /// fails (EIO from a shut-down filesystem) is not missing.
    public static func isMissing(_ path: String) -> Bool {
        var info = stat()
        guard lstat(path, &info) != 0 else { return false }
        return errno == ENOENT || errno == ENOTDIR
    }

    /// "major:minor" of the block device `path` is (following a bind mount of
    /// a device node onto a file); nil when it is not a block device.
    public static func blockDeviceNumber(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFBLK else { return nil }
        return format(UInt64(info.st_rdev))
    }

    /// glibc's encoding of dev_t (gnu_dev_major / gnu_dev_minor are macros Swift cannot see).
    static func format(_ device: UInt64) -> String {
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        return "\(major):\(minor)"
    }

    /// `what` and the current errno, as every system call of this module reports one.
    static func failure(_ what: String) -> Failure {
        let code = errno
        return Failure(description: "\(what): \(String(cString: strerror(code)))", code: code)
    }
}
