/// Where the server listens: `unix:///path/csi.sock`, a bare path, or
/// `tcp://HOST:PORT` (port 0 picks a free one).
public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: UInt16)

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let endpoint: String
        public let reason: String
        public var description: String { "invalid endpoint \"\(endpoint)\": \(reason)" }
    }

    /// Unix socket paths must fit `sockaddr_un.sun_path` with its NUL.
    public static let maxUnixPathBytes = 107

    public init(parsing text: String) throws(ParseError) {
        func fail(_ reason: String) -> ParseError { ParseError(endpoint: text, reason: reason) }
        if text.hasPrefix("tcp://") {
            let rest = text.dropFirst("tcp://".count)
            guard let colon = rest.lastIndex(of: ":") else { throw fail("expected tcp://HOST:PORT") }
            var host = String(rest[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty else { throw fail("the host is empty; use 127.0.0.1 to listen on loopback") }
            guard let port = UInt16(rest[rest.index(after: colon)...]) else {
                throw fail("the port must be a number from 0 to 65535")
            }
            self = .tcp(host: host, port: port)
            return
        }
        var path = text
        if text.hasPrefix("unix://") {
            path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/") else { throw fail("unix:// must be followed by an absolute path, as in unix:///run/csi/csi.sock") }
        } else if text.hasPrefix("unix:") {
            path = String(text.dropFirst("unix:".count))
        } else if text.contains("://") {
            throw fail("only unix:// and tcp:// endpoints are supported")
        }
        guard !path.isEmpty else { throw fail("the socket path is empty") }
        guard path.utf8.count <= Self.maxUnixPathBytes else {
            throw fail("the socket path is \(path.utf8.count) bytes; the limit is \(Self.maxUnixPathBytes)")
        }
        self = .unix(path: path)
    }

    public var description: String {
        switch self {
        case let .unix(path): "unix://\(path)"
        case let .tcp(host, port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        }
    }
}
