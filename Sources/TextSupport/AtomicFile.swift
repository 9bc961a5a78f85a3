#if canImport(Glibc)
import Glibc
#endif

/// Replaces a small file all at once: readers see the old content or the new, never
/// a part (written beside it, then renamed over it). FoundationEssentials' `.atomic`
/// write names its temporary file with mktemp, which the linker warns about.
public enum AtomicFile {
    public struct Failure: Error, CustomStringConvertible {
        public let call: String
        public let path: String
        public let errno: Int32
        public var description: String { "\(call) \(path): \(String(cString: strerror(errno)))" }
    }

    public static func replace(_ path: String, with bytes: [UInt8], mode: mode_t = 0o600) throws(Failure) {
        let temporary = "\(path).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Failure(call: "open", path: temporary, errno: errno) }
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, bytes.count - written) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else {
                let failure = Failure(call: "write", path: temporary, errno: errno)
                close(fd)
                unlink(temporary)
                throw failure
            }
            written += count
        }
        guard close(fd) == 0 else {
            let failure = Failure(call: "close", path: temporary, errno: errno)
            unlink(temporary)
            throw failure
        }
        guard rename(temporary, path) == 0 else {
            let failure = Failure(call: "rename", path: path, errno: errno)
            unlink(temporary)
            throw failure
        }
    }
}
