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
    ///
    /// Scanned as bytes, one pass per line, making only the strings an entry
    /// keeps: every stage, publish and unstage reads the table, and a kubelet
    /// node's has a line for each pod's secrets, tokens and volumes (hundreds).
    /// Splitting each line into Strings first was 30% of the node's CPU in a
    /// NodeStage on a 21-line table.
    public static func parse(_ text: String) -> [MountEntry] {
        var text = text
        return text.withUTF8 { bytes in
            var entries: [MountEntry] = []
            var fields: [Range<Int>] = []
            fields.reserveCapacity(16)
            var lineStart = 0
            while lineStart < bytes.count {
                var lineEnd = lineStart
                while lineEnd < bytes.count, bytes[lineEnd] != newline { lineEnd += 1 }
                fields.removeAll(keepingCapacity: true)
                var fieldStart = lineStart
                for index in lineStart...lineEnd where index == lineEnd || bytes[index] == space {
                    if index > fieldStart { fields.append(fieldStart..<index) }
                    fieldStart = index + 1
                }
                if let entry = entry(fields, in: bytes) { entries.append(entry) }
                lineStart = lineEnd + 1
            }
            return entries
        }
    }

    private static let newline = UInt8(ascii: "\n"), space = UInt8(ascii: " "), comma = UInt8(ascii: ","),
                       dash = UInt8(ascii: "-"), backslash = UInt8(ascii: "\\")

    /// The optional fields end at a lone `-` after the sixth field.
    private static func entry(_ fields: [Range<Int>], in bytes: UnsafeBufferPointer<UInt8>) -> MountEntry? {
        guard fields.count >= 10,
              let separator = fields[6...].firstIndex(where: { $0.count == 1 && bytes[$0.lowerBound] == dash }),
              separator + 2 < fields.count else { return nil }
        return MountEntry(mountPoint: unescaped(fields[4], in: bytes), source: unescaped(fields[separator + 2], in: bytes),
                          fsType: string(fields[separator + 1], in: bytes), options: list(fields[5], in: bytes),
                          device: string(fields[2], in: bytes),
                          superOptions: separator + 3 < fields.count ? list(fields[separator + 3], in: bytes) : [])
    }

    private static func string(_ range: Range<Int>, in bytes: UnsafeBufferPointer<UInt8>) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    private static func list(_ range: Range<Int>, in bytes: UnsafeBufferPointer<UInt8>) -> [String] {
        var items: [String] = []
        var itemStart = range.lowerBound
        for index in range.lowerBound...range.upperBound where index == range.upperBound || bytes[index] == comma {
            if index > itemStart { items.append(string(itemStart..<index, in: bytes)) }
            itemStart = index + 1
        }
        return items
    }

    /// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
    private static func unescaped(_ range: Range<Int>, in bytes: UnsafeBufferPointer<UInt8>) -> String {
        guard bytes[range].contains(backslash) else { return string(range, in: bytes) }
        var out: [UInt8] = []
        var index = range.lowerBound
        while index < range.upperBound {
            if bytes[index] == backslash, index + 3 < range.upperBound, let value = octal(bytes[index + 1...index + 3]) {
                out.append(value)
                index += 4
            } else {
                out.append(bytes[index])
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func octal(_ digits: Slice<UnsafeBufferPointer<UInt8>>) -> UInt8? {
        var value = 0
        for digit in digits {
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "7") else { return nil }
            value = value * 8 + Int(digit - UInt8(ascii: "0"))
        }
        return value <= 255 ? UInt8(value) : nil
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
