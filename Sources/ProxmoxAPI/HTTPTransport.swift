/// One HTTP exchange, as the Proxmox client needs it.
public struct HTTPRequest: Sendable {
    public var method: String
    public var url: String
    public var headers: [(String, String)]
    public var body: [UInt8]?
    /// Whole-exchange limit, seconds.
    public var timeout: Double

    public init(method: String, url: String, headers: [(String, String)] = [], body: [UInt8]? = nil, timeout: Double = 60) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
    }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    /// The status line's reason phrase: Proxmox puts its error message there.
    public var reason: String
    public var body: [UInt8]

    public init(status: Int, reason: String, body: [UInt8]) {
        self.status = status
        self.reason = reason
        self.body = body
    }
}

/// Why no response arrived.
public enum TransportError: Error, Sendable, Equatable, CustomStringConvertible {
    case cannotResolve(String)
    case cannotConnect(String)
    case tlsVerification(String)
    case tls(String)
    case timedOut(String)
    case connectionLost(String)
    case other(String)

    public var description: String {
        switch self {
        case let .cannotResolve(detail): "cannot resolve the host: \(detail)"
        case let .cannotConnect(detail): "cannot connect: \(detail)"
        case let .tlsVerification(detail): "the server's TLS certificate is not trusted: \(detail)"
        case let .tls(detail): "TLS failed: \(detail)"
        case let .timedOut(detail): "timed out: \(detail)"
        case let .connectionLost(detail): "the connection broke: \(detail)"
        case let .other(detail): detail
        }
    }
}

/// Sends HTTP requests. libcurl in production; tests may substitute their own.
public protocol HTTPTransport: Sendable {
    func send(_ request: HTTPRequest) async throws -> HTTPResponse
}

/// TLS and connection settings for a transport.
public struct TransportOptions: Sendable {
    /// PEM bundle of CAs to trust instead of the system's.
    public var caFile: String?
    /// Skip certificate verification entirely (explicit opt-in only).
    public var insecureSkipVerify = false
    public var connectTimeout: Double = 10

    public init(caFile: String? = nil, insecureSkipVerify: Bool = false, connectTimeout: Double = 10) {
        self.caFile = caFile
        self.insecureSkipVerify = insecureSkipVerify
        self.connectTimeout = connectTimeout
    }
}
