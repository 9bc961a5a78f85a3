#if canImport(Glibc)
import Glibc
#endif

/// Reads procfs and sysfs files with read(2) until end of file. Their size
/// in stat is 0 or one page, and a whole-file read that trusts it stops
/// early: /proc/self/mountinfo of a kubelet node with a few dozen pod mounts
/// came back cut at about 4 KiB, and the node then missed its own mounts.
public enum KernelFile {
    public static func bytes(_ path: String) throws(DeviceFacts.Failure) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DeviceFacts.failure("open \(path)") }
        defer { close(fd) }
        var contents: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count > 0 {
                contents += buffer[0..<count]
            } else if count == 0 {
                return contents
            } else if errno != EINTR {
                throw DeviceFacts.failure("read \(path)")
            }
        }
    }

    public static func text(_ path: String) throws(DeviceFacts.Failure) -> String {
        String(decoding: try bytes(path), as: UTF8.self)
    }

    /// The file's first line without surrounding blanks, or nil when it cannot be read (sysfs attributes).
    public static func value(_ path: String) -> String? {
        guard let text = try? text(path) else { return nil }
        var trimmed = Substring(text)
        while let last = trimmed.last, last.isWhitespace || last.isNewline { trimmed.removeLast() }
        while let first = trimmed.first, first.isWhitespace || first.isNewline { trimmed.removeFirst() }
        return String(trimmed)
    }
}
