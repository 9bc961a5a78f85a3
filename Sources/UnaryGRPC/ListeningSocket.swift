#if canImport(Glibc)
import Glibc
#endif

/// Why the server could not start listening.
public enum ListenError: Error, CustomStringConvertible {
    case inUseByLiveServer(path: String)
    case notASocket(path: String)
    case cannotResolve(host: String, reason: String)
    case system(SystemCallError, endpoint: Endpoint)

    public var description: String {
        switch self {
        case let .inUseByLiveServer(path):
            "\(path) is in use by a running server; stop it first or choose another --endpoint"
        case let .notASocket(path):
            "\(path) exists and is not a socket; refusing to replace it"
        case let .cannotResolve(host, reason):
            "cannot listen on host \"\(host)\": \(reason)"
        case let .system(error, endpoint):
            "cannot listen on \(endpoint): \(error)"
        }
    }
}

/// A bound, listening, non-blocking socket. On close a unix socket file is
/// removed, but only if it is still the one this process created.
public final class ListeningSocket: Sendable {
    public let fd: Int32
    /// The endpoint as bound (a tcp port 0 replaced by the real port).
    public let endpoint: Endpoint
    private let socketFileIdentity: (device: UInt, inode: UInt)?

    private init(fd: Int32, endpoint: Endpoint, socketFileIdentity: (UInt, UInt)?) {
        self.fd = fd
        self.endpoint = endpoint
        self.socketFileIdentity = socketFileIdentity
    }

    static let backlog: Int32 = 256

    public static func open(_ endpoint: Endpoint) throws(ListenError) -> ListeningSocket {
        switch endpoint {
        case let .unix(path): try openUnix(path: path)
        case let .tcp(host, port): try openTCP(host: host, port: port)
        }
    }

    public func close() {
        _ = Glibc.close(fd)
        guard case let .unix(path) = endpoint, let identity = socketFileIdentity,
              let current = Self.fileIdentity(path), current == identity else { return }
        unlink(path)
    }

    // MARK: - unix

    private static func openUnix(path: String) throws(ListenError) -> ListeningSocket {
        try removeStaleSocket(at: path)
        do throws(SystemCallError) {
            try createParentDirectory(of: path)
            let fd = try retryingOnInterrupt("socket") {
                socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            }
            do throws(SystemCallError) {
                var address = unixAddress(path)
                try retryingOnInterrupt("bind") {
                    withUnsafePointer(to: &address) { pointer in
                        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                        }
                    }
                }
                // Connecting needs write permission on the file: owner and group only.
                try retryingOnInterrupt("chmod") { chmod(path, 0o660) }
                try retryingOnInterrupt("listen") { listen(fd, backlog) }
            } catch {
                _ = Glibc.close(fd)
                throw error
            }
            return ListeningSocket(fd: fd, endpoint: .unix(path: path), socketFileIdentity: fileIdentity(path))
        } catch {
            throw .system(error, endpoint: .unix(path: path))
        }
    }

    private static func unixAddress(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        return address
    }

    /// A socket file left by a dead server is removed; one a live server
    /// still answers on is not stolen; anything that is not a socket is kept.
    private static func removeStaleSocket(at path: String) throws(ListenError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket(path: path) }

        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { throw .system(SystemCallError(call: "socket", errno: errno), endpoint: .unix(path: path)) }
        defer { _ = Glibc.close(probe) }
        var address = unixAddress(path)
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(probe, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if connected == 0 { throw .inUseByLiveServer(path: path) }
        let code = errno
        guard code == ECONNREFUSED || code == ENOENT else {
            throw .system(SystemCallError(call: "connect (checking \(path) for a live server)", errno: code),
                          endpoint: .unix(path: path))
        }
        unlink(path)
    }

    private static func createParentDirectory(of path: String) throws(SystemCallError) {
        var components = path.split(separator: "/", omittingEmptySubsequences: true).dropLast()
        var current = path.hasPrefix("/") ? "" : "."
        while let next = components.first {
            components = components.dropFirst()
            current += "/" + next
            if mkdir(current, 0o750) != 0, errno != EEXIST {
                throw SystemCallError(call: "mkdir \(current)", errno: errno)
            }
        }
    }

    private static func fileIdentity(_ path: String) -> (UInt, UInt)? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return (UInt(info.st_dev), UInt(info.st_ino))
    }

    // MARK: - tcp

    private static func openTCP(host: String, port: UInt16) throws(ListenError) -> ListeningSocket {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var results: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &results)
        guard status == 0, let info = results else {
            throw .cannotResolve(host: host, reason: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(results) }
        let requested = Endpoint.tcp(host: host, port: port)

        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system(SystemCallError(call: "socket", errno: errno), endpoint: requested) }
        do throws(SystemCallError) {
            var one: Int32 = 1
            try retryingOnInterrupt("setsockopt SO_REUSEADDR") {
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            try retryingOnInterrupt("bind") { bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) }
            try retryingOnInterrupt("listen") { listen(fd, backlog) }
        } catch {
            _ = Glibc.close(fd)
            throw .system(error, endpoint: requested)
        }
        var bound = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &bound) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let family = Int32(bound.ss_family)
        let boundPort: UInt16 = withUnsafePointer(to: &bound) { pointer in
            if family == AF_INET6 {
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            } else {
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            }
        }
        return ListeningSocket(fd: fd, endpoint: .tcp(host: host, port: boundPort), socketFileIdentity: nil)
    }
}
