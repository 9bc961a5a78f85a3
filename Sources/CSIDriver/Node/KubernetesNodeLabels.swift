import FoundationEssentials
import ProxmoxAPI

/// Reads this node's labels from the Kubernetes API (in-cluster, KubernetesAPI).
/// The node plugin needs `get` on nodes.
public struct KubernetesNodeLabels: Sendable {
    public var api: KubernetesAPI

    public init(api: KubernetesAPI) {
        self.api = api
    }

    /// Nil outside a pod (no service host in the environment, or no token mounted).
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 directory: String = KubernetesAPI.serviceAccountDirectory) -> KubernetesNodeLabels? {
        KubernetesAPI.inCluster(environment: environment, directory: directory).map(KubernetesNodeLabels.init)
    }

    public typealias Failure = KubernetesAPI.Failure

    /// The labels of Node `name`: asked once, at registration (kubelet's NodeGetInfo).
    public func labels(ofNode name: String, transport: (any HTTPTransport)? = nil) async throws -> [String: String] {
        let response = try await api.call("GET", "/api/v1/nodes/" + KubernetesAPI.segment(name), transport: transport)
        guard response.status == 200 else {
            let hint = response.status == 403 ? " (the node plugin's service account needs get on nodes)" : ""
            throw Failure(description: "GET \(api.apiURL)/api/v1/nodes/\(name): HTTP \(response.status)\(hint)", status: response.status)
        }
        return response.body["metadata"]["labels"].object?.compactMapValues(\.string) ?? [:]
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
