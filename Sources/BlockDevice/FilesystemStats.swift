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
            totalInodes: Int64(info.f_files), freeInodes: Int64(info.f_ffree), usedInodes: Int64(info.f_files - info.f_ffree))
    }

    /// The size of the block device at `path` (a device node, or a file a device is bound onto).
    public static func blockDeviceBytes(_ path: String) throws(Failure) -> Int64 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw failure("open \(path)") }
        defer { close(fd) }
        var bytes: UInt64 = 0
        guard CLinux_block_device_bytes(fd, &bytes) == 0 else { throw failure("reading the size of \(path)") }
        return Int64(bytes)
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

    private static func failure(_ what: String) -> Failure {
        let code = errno
        return Failure(description: "\(what): \(String(cString: strerror(code)))", code: code)
    }
}
