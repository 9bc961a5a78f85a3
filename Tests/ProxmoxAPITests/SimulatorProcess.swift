import FakeProxmox
import Foundation
import ProxmoxAPI

let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// The Proxmox simulator as a child process, over HTTPS.
final class SimulatorProcess: @unchecked Sendable {
    let process = Process()
    /// Its write end lives as long as this process: when the test process
    /// ends, the simulator reads EOF and exits.
    let lifeline = Pipe()
    let baseURL: String
    let certificates: TestCertificates
    let control: CurlTransport

    static let token = Credentials.apiToken(id: "csi@pve!csi", secret: "5ba0d1b4-8d0e-4c61-9a8f-3d2f1c7e6b21")
    static let auditToken = Credentials.apiToken(id: "audit@pve!ro", secret: "0c3c4f4e-1f7b-4a53-8a3e-5b9a2e1d7c40")
    static let user = Credentials.password(user: "csi@pve", password: "sim-csi-password")

    init(arguments: [String] = []) throws {
        certificates = try TestCertificates.make(name: "server")
        let portFile = certificates.directory + "/port"
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-m", "pvesim", "--listen", "127.0.0.1:0", "--port-file", portFile,
                             "--tls-cert", certificates.certFile, "--tls-key", certificates.keyFile,
                             "--auth-failure-delay", "0.05", "--exit-on-stdin-eof"] + arguments
        process.currentDirectoryURL = repositoryRoot.appendingPathComponent("simulator")
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = lifeline
        _ = FileManager.default.createFile(atPath: certificates.directory + "/simulator.log", contents: nil)
        process.standardError = FileHandle(forWritingAtPath: certificates.directory + "/simulator.log")
        try process.run()
        var port: String?
        for _ in 0..<200 {
            if let text = try? String(contentsOfFile: portFile, encoding: .utf8), !text.isEmpty { port = text; break }
            usleep(25_000)
        }
        guard let port else { process.terminate(); throw SetupError("the simulator did not start") }
        baseURL = "https://127.0.0.1:\(port)"
        control = CurlTransport(options: TransportOptions(caFile: certificates.caFile))
    }

    deinit {
        process.terminate()
        process.waitUntilExit()
        control.shutdown()
    }

    func client(_ credentials: Credentials = SimulatorProcess.token, caFile: String? = nil, insecure: Bool = false,
                sleeper: any Sleeper = TaskSleeper(), now: @escaping @Sendable () -> Double = { ProcessInfo.processInfo.systemUptime },
                retry: RetryPolicy = RetryPolicy(baseDelay: 0.01, maxDelay: 0.05)) -> ProxmoxClient {
        let options = TransportOptions(caFile: caFile ?? certificates.caFile, insecureSkipVerify: insecure)
        return ProxmoxClient(endpoint: ClusterEndpoint(url: baseURL, credentials: credentials, transport: options),
                             sleeper: sleeper, retry: retry, now: now)
    }

    /// Test hooks under /_sim/ (not part of the Proxmox API).
    @discardableResult
    func hook(_ method: String, _ path: String, _ parameters: [(String, String)] = []) async throws -> JSONValue {
        let body = parameters.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")" }
            .joined(separator: "&")
        let response = try await control.send(HTTPRequest(method: method, url: baseURL + path,
            headers: [("Content-Type", "application/x-www-form-urlencoded")], body: Array(body.utf8)))
        return try JSONValue.parse(response.body)["data"]
    }

    func injectFaults(_ rules: String) async throws {
        try await hook("PUT", "/_sim/faults", [("rules", rules)])
    }

    /// (method, path) of every API request so far.
    func requests() async throws -> [(String, String)] {
        (try await hook("GET", "/_sim/log").array ?? []).map { ($0["method"].string ?? "", $0["path"].string ?? "") }
    }
}
