#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import TextSupport

/// One line of /proc/self/mountinfo.
public struct MountEntry: Sendable, Equatable {
    public var mountPoint: String
    /// The mounted source (a device path for block filesystems).
    public var source: String
    public var fsType: String
    /// Options of this mount point (a read-only bind of a writable fs says `ro` here).
    public var options: [String]
    /// "major:minor" of the filesystem's device.
    public var device: String
    /// Options of the filesystem itself: `ro` here under an `rw` mount means
    /// the kernel made the filesystem read-only (errors=remount-ro).
    public var superOptions: [String] = []
}

/// What is mounted where, read from the kernel (mountinfo), never from
/// /etc/mtab, which containers often lack or fake.
public enum MountTable {
    public static func read(from path: String = "/proc/self/mountinfo") throws -> [MountEntry] {
        try parse(KernelFile.text(path))
    }

    /// Fields: id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    public static func parse(_ text: String) -> [MountEntry] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count >= 10, let separator = fields.firstIndex(of: "-"), separator + 2 < fields.count else { return nil }
            return MountEntry(mountPoint: unescape(fields[4]), source: unescape(fields[separator + 2]),
                              fsType: fields[separator + 1], options: fields[5].split(separator: ",").map(String.init),
                              device: fields[2],
                              superOptions: separator + 3 < fields.count ? fields[separator + 3].split(separator: ",").map(String.init) : [])
        }
    }

    /// mountinfo writes space, tab, newline and backslash as octal escapes.
    static func unescape(_ field: String) -> String {
        var out = [UInt8]()
        let bytes = Array(field.utf8)
        var i = 0
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

    /// The entry mounted at `path` (the last one, if stacked). mountinfo
    /// records resolved paths, so a path through a symbolic link (a kubelet
    /// directory that is a link to another disk) is resolved first.
    public static func mount(at path: String, in entries: [MountEntry]) -> MountEntry? {
        let resolved = resolvingSymlinks(path)
        return entries.last { $0.mountPoint == resolved }
    }

    /// `path` with every symbolic link in its existing part resolved; the
    /// part that does not exist yet is appended as it is.
    public static func resolvingSymlinks(_ path: String) -> String {
        var existing = path
        var missing: [Substring] = []
        while true {
            if let real = realpath(existing, nil) {
                defer { free(real) }
                let base = String(cString: real)
                return missing.reversed().reduce(base) { $0.hasSuffix("/") ? $0 + $1 : $0 + "/" + $1 }
            }
            guard existing != "/", let slash = existing.lastIndex(of: "/") else { break }
            missing.append(existing[existing.index(after: slash)...])
            existing = slash == existing.startIndex ? "/" : String(existing[..<slash])
        }
        return path
    }
}

/// A path from a CSI request, checked before the driver touches it.
public enum RequestPath {
    public enum Problem: Error, Equatable, CustomStringConvertible {
        case notAbsolute(String)
        case parentReference(String)
        case outside(String, allowed: [String])

        public var description: String {
            switch self {
            case let .notAbsolute(path): "\"\(path)\" is not an absolute path"
            case let .parentReference(path): "\"\(path)\" contains \"..\""
            case let .outside(path, allowed): "\"\(path)\" is outside the directories kubelet uses (\(allowed.joined(separator: ", ")))"
            }
        }
    }

    /// Absolute, no `..`, and inside one of `allowedRoots` when any are given.
    public static func check(_ path: String, allowedRoots: [String] = []) throws(Problem) {
        guard path.hasPrefix("/") else { throw .notAbsolute(path) }
        guard !path.hasParentReference else { throw .parentReference(path) }
        guard allowedRoots.isEmpty || allowedRoots.contains(where: { path == $0 || path.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") })
        else { throw .outside(path, allowed: allowedRoots) }
    }
}

/// Unmounting and removing a target, tolerating what is already done.
public enum Unmounter {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Unmounts `path` if something is mounted there; nothing there is success.
    public static func unmount(_ path: String, mountTable: () throws -> [MountEntry] = { try MountTable.read() }) throws(Failure) {
        let entries: [MountEntry]
        do { entries = try mountTable() } catch { throw Failure(description: "cannot read the mount table: \(error)") }
        guard MountTable.mount(at: path, in: entries) != nil else { return }
        if umount2(path, 0) != 0 {
            throw Failure(description: "umount \(path) failed: \(String(cString: strerror(errno)))")
        }
    }

    /// Unmounts `path` if something is mounted there, then removes the
    /// (empty) directory or file. A missing path is success.
    public static func unmountAndRemove(_ path: String, mountTable: () throws -> [MountEntry] = { try MountTable.read() }) throws(Failure) {
        try unmount(path, mountTable: mountTable)
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        let removed = info.st_mode & S_IFMT == S_IFDIR ? rmdir(path) : unlink(path)
        if removed != 0, errno != ENOENT {
            throw Failure(description: "cannot remove \(path): \(String(cString: strerror(errno)))")
        }
    }
}
