/// How the client proves who it is.
public enum Credentials: Sendable {
    /// `USER@REALM!TOKENID` and its secret: no CSRF, no expiry.
    case apiToken(id: String, secret: String)
    /// User and password: a ticket that is renewed before it expires.
    case password(user: String, password: String)
}

/// Where a Proxmox cluster is and how to talk to it.
public struct ClusterEndpoint: Sendable {
    /// `https://pve.example:8006` (the `/api2/json` suffix is optional).
    public var url: String
    public var credentials: Credentials
    public var transport: TransportOptions
    /// Limit for one HTTP exchange, seconds.
    public var requestTimeout: Double

    public init(url: String, credentials: Credentials, transport: TransportOptions = TransportOptions(), requestTimeout: Double = 30) {
        self.url = url
        self.credentials = credentials
        self.transport = transport
        self.requestTimeout = requestTimeout
    }

    /// The API root, always ending in `/api2/json`.
    var apiBase: String {
        var base = url
        while base.hasSuffix("/") { base.removeLast() }
        return base.hasSuffix("/api2/json") ? base : base + "/api2/json"
    }
}
