import FoundationEssentials
import ProxmoxAPI
import TextSupport

/// The Kubernetes API as in-cluster clients reach it (client-go's
/// rest.InClusterConfig): the API server from KUBERNETES_SERVICE_HOST/PORT,
/// the pod's service-account token as a bearer token, the service account's
/// CA; or an explicit server, token file and CA (tools run outside a pod).
public struct KubernetesAPI: Sendable {
    public var apiURL: String
    public var tokenFile: String
    public var caFile: String?

    public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    public init(apiURL: String, tokenFile: String, caFile: String?) {
        (self.apiURL, self.tokenFile, self.caFile) = (apiURL, tokenFile, caFile)
    }

    /// Nil outside a pod (no service host in the environment, or no token mounted).
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 directory: String = serviceAccountDirectory) -> KubernetesAPI? {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty,
              FileManager.default.isReadableFile(atPath: directory + "/token") else { return nil }
        let port = environment["KUBERNETES_SERVICE_PORT"] ?? "443"
        // An IPv6 address goes in brackets in a URL.
        let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        return KubernetesAPI(apiURL: "https://\(authority)", tokenFile: directory + "/token", caFile: directory + "/ca.crt")
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        public var status: Int = 0
    }

    public struct Response: Sendable {
        public var status: Int
        public var body: JSONValue
    }

    /// One call; any status comes back (404 and 409 are answers a caller reads). The token is
    /// read at each call: kubelet rotates it.
    public func call(_ method: String, _ path: String, body: JSONValue? = nil, contentType: String = "application/json",
                     transport: (any HTTPTransport)? = nil) async throws -> Response {
        let token: String
        do {
            token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmed()
        } catch {
            throw Failure(description: "cannot read the service account token \(tokenFile): \(error.reason)")
        }
        let owned = transport == nil ? CurlTransport(options: TransportOptions(caFile: caFile)) : nil
        defer { owned?.shutdown() }
        let client: any HTTPTransport = transport ?? owned!
        var headers = [("Authorization", "Bearer \(token)"), ("Accept", "application/json")]
        if body != nil { headers.append(("Content-Type", contentType)) }
        let request = HTTPRequest(method: method, url: apiURL + path, headers: headers, body: body.map { $0.serialized() }, timeout: 30)
        let response: HTTPResponse
        do {
            response = try await client.send(request)
        } catch {
            throw Failure(description: "\(method) \(request.url): \(error)")
        }
        return Response(status: response.status, body: (try? JSONValue.parse(response.body)) ?? .null)
    }

    /// A call that must succeed; its body.
    public func expect(_ method: String, _ path: String, body: JSONValue? = nil, contentType: String = "application/json",
                       accepting: Set<Int> = [200, 201, 202]) async throws -> JSONValue {
        let response = try await call(method, path, body: body, contentType: contentType)
        guard accepting.contains(response.status) else {
            let message = response.body["message"].string ?? "HTTP \(response.status)"
            let hint = response.status == 403 ? " (the service account lacks this permission)" : ""
            throw Failure(description: "\(method) \(path): \(message)\(hint)", status: response.status)
        }
        return response.body
    }

    /// A path segment, escaped.
    public static func segment(_ text: String) -> String {
        text.percentEncodedSegment
    }
}

extension JSONValue {
    /// The value with `path`'s member set (objects made on the way); `nil` removes it.
    public func setting(_ path: [String], to value: JSONValue?) -> JSONValue {
        guard let key = path.first else { return value ?? .null }
        var object = self.object ?? [:]
        if path.count == 1 {
            object[key] = value
        } else {
            object[key] = (object[key] ?? .object([:])).setting(Array(path.dropFirst()), to: value)
        }
        return .object(object)
    }
}
