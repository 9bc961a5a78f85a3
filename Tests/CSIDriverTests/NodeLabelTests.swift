@testable import CSIDriver
import FakeProxmox
import Foundation
import Testing

/// A stand-in Kubernetes API server over HTTPS (Python's http.server and ssl):
/// GET /api/v1/nodes/<name> answers the Node with its labels, to the right
/// bearer token only, as the API server does (401 without it, 403 for a name it forbids).
final class FakeKubernetesAPI: @unchecked Sendable {
    let process = Process()
    let lifeline = Pipe()
    let certificates: TestCertificates
    let url: String
    let directory: String
    static let token = "node-plugin-token"

    static let script = #"""
    import http.server, json, ssl, sys, threading
    cert, key, token, nodes = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args): pass
        def do_GET(self):
            prefix = "/api/v1/nodes/"
            name = self.path[len(prefix):] if self.path.startswith(prefix) else None
            if self.headers.get("Authorization") != "Bearer " + token:
                status, body = 401, {"kind": "Status", "reason": "Unauthorized"}
            elif name == "forbidden":
                status, body = 403, {"kind": "Status", "reason": "Forbidden"}
            elif name in nodes:
                status, body = 200, {"kind": "Node", "metadata": {"name": name, "labels": nodes[name]}}
            else:
                status, body = 404, {"kind": "Status", "reason": "NotFound"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    """#

    init(nodes: [String: [String: String]]) throws {
        certificates = try TestCertificates.make(name: "kube")
        directory = certificates.directory
        try Self.token.write(toFile: directory + "/token", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: certificates.caFile, toPath: directory + "/ca.crt")
        let nodesJSON = String(decoding: try JSONSerialization.data(withJSONObject: nodes), as: UTF8.self)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.script, certificates.certFile, certificates.keyFile, Self.token, nodesJSON]
        let output = Pipe()
        process.standardOutput = output
        process.standardInput = lifeline
        try process.run()
        let line = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        guard let port = Int(line.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            process.terminate()
            throw SetupError("the fake API server did not start: \(line)")
        }
        url = "https://127.0.0.1:\(port)"
    }

    deinit { process.terminate() }

    /// What a pod sees: the service host and port, and its service account's token and CA.
    var environment: [String: String] {
        ["KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": String(url.split(separator: ":").last!)]
    }
}

@Suite struct NodeLabelTests {
    @Test func inAPodTheLabelsAreReadWithTheServiceAccount() async throws {
        let api = try FakeKubernetesAPI(nodes: ["k8s-node-1": ["csi.proxmox.sinextra.dev/max-volume-attachments": "12", "zone": "a"]])
        let reader = try #require(KubernetesNodeLabels.inCluster(environment: api.environment, directory: api.directory))
        #expect(reader.api.apiURL == api.url)
        #expect(try await reader.labels(ofNode: "k8s-node-1") == ["csi.proxmox.sinextra.dev/max-volume-attachments": "12", "zone": "a"])
    }

    @Test func outsideAPodThereIsNoAPI() throws {
        #expect(KubernetesNodeLabels.inCluster(environment: [:]) == nil)
        #expect(KubernetesNodeLabels.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.0.0.1"], directory: "/nonexistent") == nil)
    }

    @Test func aRefusalSaysWhatIsMissing() async throws {
        let api = try FakeKubernetesAPI(nodes: [:])
        let reader = try #require(KubernetesNodeLabels.inCluster(environment: api.environment, directory: api.directory))
        await #expect { try await reader.labels(ofNode: "forbidden") } throws: { error in
            "\(error)".contains("HTTP 403") && "\(error)".contains("needs get on nodes")
        }
        try "stale".write(toFile: api.directory + "/token", atomically: true, encoding: .utf8)
        await #expect { try await reader.labels(ofNode: "k8s-node-1") } throws: { "\($0)".contains("HTTP 401") }
    }

    /// The plugin's label (docs/options-node.md), or one under this driver's own name, which wins;
    /// never more than the VM's free slots, never less than one.
    @Test(arguments: [
        (["csi.proxmox.sinextra.dev/max-volume-attachments": "12"], 12, false),
        (["proxmox-csi/max-volume-attachments": "8", "csi.proxmox.sinextra.dev/max-volume-attachments": "12"], 8, false),
        (["csi.proxmox.sinextra.dev/max-volume-attachments": "64"], 29, true),
        (["csi.proxmox.sinextra.dev/max-volume-attachments": "0"], nil, true),
        (["csi.proxmox.sinextra.dev/max-volume-attachments": "many"], nil, true),
        (["other": "1"], nil, false),
    ] as [([String: String], Int64?, Bool)])
    func theLabelLimitsTheVolumes(labels: [String: String], limit: Int64?, problem: Bool) {
        let found = MaxVolumeAttachmentsLabel.limit(in: labels, driverName: "proxmox-csi", slots: 29)
        #expect(found.limit == limit)
        #expect((found.problem != nil) == problem)
    }

    @Test func nodeGetInfoReportsTheLabelsLimit() async throws {
        let api = try FakeKubernetesAPI(nodes: ["k8s-node-1": ["csi.proxmox.sinextra.dev/max-volume-attachments": "12"],
                                                "k8s-node-2": [:]])
        for (node, expected) in [("k8s-node-1", Int64(12)), ("k8s-node-2", NodeService.scsiSlots - 1), ("k8s-node-3", NodeService.scsiSlots - 1)] {
            var settings = NodeSettings(nodeName: node)
            settings.kubernetes = KubernetesNodeLabels.inCluster(environment: api.environment, directory: api.directory)
            let info = try await NodeService(settings: settings, volumes: nil).getInfo()
            #expect(info.maxVolumesPerNode == expected, "\(node)")
        }
    }
}
