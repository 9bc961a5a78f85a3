@testable import CSIDriver
@testable import ProxmoxDomain
import Foundation
import ProxmoxAPI
import Testing

let validConfig = """
clusters:
  - name: pve-main
    url: https://pve.example.com:8006
    tokenID: csi@pve!csi
    tokenSecret: super-secret-token-value
profiles:
  fast:
    storage: local-lvm
    ssd: true
    discard: true
    bus: virtio
    iops: 5000
    fsType: xfs
driver:
  ownerVMID: 9998
  taskTimeout: 300
"""

@Suite struct DriverConfigTests {
    @Test func readsOurFormat() throws {
        let config = try DriverConfig.parse(validConfig)
        #expect(config.clusters.map(\.name) == ["pve-main"])
        guard case let .apiToken(id, secret) = config.clusters[0].credentials else { throw SetupError("token expected") }
        #expect(id == "csi@pve!csi" && secret == "super-secret-token-value")
        #expect(config.profiles["fast"] == DriverConfig.Profile(storage: "local-lvm", disk: DiskOptions(bus: "virtio", ssd: true, discard: true, iops: 5000), fsType: "xfs"))
        #expect(config.ownerVMID == 9998 && config.taskTimeout == 300 && config.requestTimeout == 30)
        #expect(config.warnings.isEmpty)
    }

    @Test func readsTheSergelogvinovPluginFormat() throws {
        let config = try DriverConfig.parse("""
        clusters:
          - url: https://cluster-api-1.example.com:8006/api2/json
            insecure: true
            token_id: "kubernetes-csi@pve!csi"
            token_secret: "key"
            region: Region-1
        """)
        #expect(config.clusters[0].name == "Region-1")
        #expect(config.clusters[0].insecureSkipVerify)
        #expect(config.ownerVMID == 9999)
        #expect(config.warnings.contains { $0.contains("insecureSkipVerify") })
    }

    @Test func readsSecretsFromFilesRelativeToTheConfig() throws {
        let directory = NSTemporaryDirectory() + "config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "from-a-file\n".write(toFile: directory + "/token", atomically: true, encoding: .utf8)
        try """
        clusters:
          - name: a
            url: https://pve:8006
            tokenID: csi@pve!csi
            tokenSecretFile: token
        """.write(toFile: directory + "/config.yaml", atomically: true, encoding: .utf8)
        let config = try DriverConfig.load(path: directory + "/config.yaml")
        guard case let .apiToken(_, secret) = config.clusters[0].credentials else { throw SetupError("token expected") }
        #expect(secret == "from-a-file")
    }

    @Test(arguments: [
        ("", "the file is empty"),
        ("clusters: [", "not valid YAML"),
        ("profiles: {}", "clusters: missing"),
        ("clusters: []", "clusters (line 1): expected a list with at least one cluster"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value\n    colour: red",
         "clusters[0].colour (line 6): unknown key"),
        ("clusters:\n  - name: a\n    url: pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value",
         "clusters[0].url (line 3): expected https://HOST:8006"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi\n    tokenSecret: super-secret-token-value",
         "clusters[0].tokenID (line 4): expected USER@REALM!TOKENNAME"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi",
         "clusters[0].tokenSecret (line 2): missing"),
        ("clusters:\n  - name: a\n    url: https://pve:8006",
         "missing credentials"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecretFile: /nonexistent/token",
         "clusters[0].tokenSecretFile (line 5): cannot read /nonexistent/token"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value\nprofiles:\n  p:\n    storage: Local_LVM",
         "profiles.p.storage (line 8): \"Local_LVM\" is not a Proxmox storage id"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value\nprofiles:\n  p:\n    bus: ide",
         "profiles.p.bus (line 8): expected one of scsi, virtio"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value\nprofiles:\n  p:\n    ssd: true",
         "profiles.p.storage (line 8): missing: name a storage for every cluster (none for a)"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value\ndriver:\n  ownerVMID: 42",
         "driver.ownerVMID (line 7): expected a whole number from 100 to 999999999"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value\n  - name: a\n    url: https://pve2:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value",
         "two clusters are named \"a\""),
    ])
    func everyProblemNamesTheKeyAndNeverTheSecret(yaml: String, expected: String) {
        do {
            _ = try DriverConfig.parse(yaml, file: "test.yaml")
            Issue.record("accepted: \(yaml)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description)")
            #expect(error.description.hasPrefix("config test.yaml: "))
            #expect(!error.description.contains("super-secret-token-value"))
        }
    }
}

struct SetupError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

@Suite struct ClusterCheckTests {
    let cluster = try! DriverConfig.parse(validConfig).clusters[0]

    @Test(arguments: [
        (ProxmoxError.transport(.cannotConnect("refused")), "nothing answers at https://pve.example.com:8006"),
        (.transport(.cannotResolve("no such host")), "cannot resolve the host"),
        (.transport(.tlsVerification("unable to get local issuer certificate")), "not trusted by the system's CAs"),
        (.authenticationFailed(reason: "authentication failure"), "refused the API token csi@pve!csi"),
        (.permissionDenied(path: "/storage/local-lvm", privilege: "Datastore.AllocateSpace", message: "x"),
         "lack Datastore.AllocateSpace on /storage/local-lvm"),
    ])
    func explainsWhatToFix(error: ProxmoxError, expected: String) {
        let text = ClusterCheck.explain(error, cluster: cluster)
        #expect(text.contains(expected), "\(text)")
        #expect(!text.contains("super-secret-token-value"))
    }
}
