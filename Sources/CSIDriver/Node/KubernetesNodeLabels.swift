import Foundation
import ProxmoxAPI

/// Reads this node's labels from the Kubernetes API the way in-cluster
/// clients do (client-go's rest.InClusterConfig): the API server from
/// KUBERNETES_SERVICE_HOST/PORT, the pod's service-account token as a bearer
/// token, the service account's CA. The node plugin needs `get` on nodes.
public struct KubernetesNodeLabels: Sendable {
    public var apiURL: String
    public var tokenFile: String
    public var caFile: String

    public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    public init(apiURL: String, tokenFile: String, caFile: String) {
        (self.apiURL, self.tokenFile, self.caFile) = (apiURL, tokenFile, caFile)
    }

    /// Nil outside a pod (no service host in the environment, or no token mounted).
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 directory: String = serviceAccountDirectory) -> KubernetesNodeLabels? {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty,
              FileManager.default.isReadableFile(atPath: directory + "/token") else { return nil }
        let port = environment["KUBERNETES_SERVICE_PORT"] ?? "443"
        // An IPv6 address goes in brackets in a URL.
        let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        return KubernetesNodeLabels(apiURL: "https://\(authority)", tokenFile: directory + "/token", caFile: directory + "/ca.crt")
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// The labels of Node `name`. The token is read at each call: kubelet rotates it.
    public func labels(ofNode name: String, transport: (any HTTPTransport)? = nil) async throws -> [String: String] {
        let token: String
        do {
            token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw Failure(description: "cannot read the service account token \(tokenFile): \(error.localizedDescription)")
        }
        // Asked once, at registration (kubelet's NodeGetInfo): a transport of its own, stopped after.
        let owned = transport == nil ? CurlTransport(options: TransportOptions(caFile: caFile)) : nil
        defer { owned?.shutdown() }
        let client: any HTTPTransport = transport ?? owned!
        let escaped = name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? name
        let request = HTTPRequest(method: "GET", url: "\(apiURL)/api/v1/nodes/\(escaped)",
                                  headers: [("Authorization", "Bearer \(token)"), ("Accept", "application/json")], timeout: 10)
        let response: HTTPResponse
        do {
            response = try await client.send(request)
        } catch {
            throw Failure(description: "GET \(request.url): \(error)")
        }
        guard response.status == 200 else {
            let hint = response.status == 403 ? " (the node plugin's service account needs get on nodes)" : ""
            throw Failure(description: "GET \(request.url): HTTP \(response.status) \(response.reason)\(hint)")
        }
        guard let labels = try? JSONValue.parse(response.body)["metadata"]["labels"].object else { return [:] }
        return labels.compactMapValues(\.string)
    }
}

/// proxmox-csi-plugin's per-node limit on attached volumes, a Node label
/// (its pkg/csi/driver.go NodeLabelMaxVolumeAttachments, read by node.go maxVolumes).
enum MaxVolumeAttachmentsLabel {
    static let pluginKey = "csi.proxmox.sinextra.dev/max-volume-attachments"

    static func key(forDriver name: String) -> String { name + "/max-volume-attachments" }

    /// The limit the labels set (this driver's name's key first, then the plugin's), within 1…`slots`;
    /// a value outside that is reported as a problem and not used.
    static func limit(in labels: [String: String], driverName: String, slots: Int64) -> (limit: Int64?, problem: String?) {
        for key in [key(forDriver: driverName), pluginKey] {
            guard let text = labels[key] else { continue }
            guard let value = Int64(text), value >= 1 else {
                return (nil, "label \(key)=\"\(text)\" is not a whole number of at least 1; ignored")
            }
            return (min(value, slots), value > slots ? "label \(key)=\(value) is more than the \(slots) slots free on this VM; using \(slots)" : nil)
        }
        return (nil, nil)
    }
}
