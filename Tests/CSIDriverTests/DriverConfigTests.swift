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
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value\nfeatures:\n  controllerVmID: 100",
         "features.controllerVmID (line 7): expected a whole number from 101 to 999999999"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenIDFile: /x\n    tokenSecret: super-secret-token-value",
         "give tokenID or tokenIDFile, not both"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: super-secret-token-value\n"
            + "driver:\n  ownerVMID: 9998\nfeatures:\n  controllerVmID: 9999",
         "features.controllerVmID (line 9): 9999 differs from driver.ownerVMID 9998"),
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

/// Configs written for sergelogvinov/proxmox-csi-plugin (at a7c58ec, v0.19.1) load
/// unchanged (issue 14, item 1). Its files, copied as test data.
@Suite struct PluginConfigTests {
    /// test/config/cluster-config-1.yaml
    static let clusterConfig1 = """
    features:
      provider: default
    clusters:
      - url: https://127.0.0.1:8006/api2/json
        insecure: false
        token_id: "user!token-id"
        token_secret: "secret"
        region: cluster-1
      - url: https://127.0.0.2:8006/api2/json
        insecure: false
        token_id: "user!token-id"
        token_secret: "secret"
        region: cluster-2
    """

    /// hack/testdata/cloud-config.yaml
    static let cloudConfig = """
    clusters:
      - url: https://cluster-api-1.exmple.com:8006/api2/json
        insecure: false
        token_id: "login!name"
        token_secret: "secret"
        region: Region-1
      - url: https://cluster-api-2.exmple.com:8006/api2/json
        insecure: false
        token_id: "login!name"
        token_secret: "secret"
        region: Region-2
    """

    /// The chart's values.yaml `config:` with its commented cluster filled in, as
    /// templates/secrets.yaml renders it (`toYaml .Values.config`: keys sorted).
    static let chartValues = """
    clusters:
    - insecure: false
      region: cluster-1
      token_id: login!name
      token_secret: secret
      url: https://cluster-api-1.exmple.com:8006/api2/json
    features:
      provider: default
    """

    @Test(arguments: [
        (clusterConfig1, ["cluster-1", "cluster-2"]),
        (cloudConfig, ["Region-1", "Region-2"]),
        (chartValues, ["cluster-1"]),
    ])
    func thePluginsOwnConfigsLoadWithTheirMeaning(yaml: String, clusters: [String]) throws {
        let config = try DriverConfig.parse(yaml)
        #expect(config.clusters.map(\.name) == clusters)
        #expect(config.clusters.allSatisfy { !$0.insecureSkipVerify && $0.url.hasSuffix("/api2/json") })
        #expect(config.ownerVMID == 9999)
        guard case let .apiToken(id, secret) = config.clusters[0].credentials else { throw SetupError("token expected") }
        #expect(id.hasSuffix("!token-id") || id.hasSuffix("!name"))
        #expect(secret == "secret")
        // Their token ids name no realm: loaded, with a warning per cluster naming the key.
        #expect(config.warnings.filter { $0.contains(".tokenID") && $0.contains("names no realm") }.count == clusters.count)
    }

    @Test func featuresControllerVmIDIsTheOwnerVMIDAndCapmoxIsAcceptedWithAWarning() throws {
        let config = try DriverConfig.parse("""
        features:
          provider: capmox
          controllerVmID: 4242
        clusters:
          - url: https://pve:8006
            token_id: "csi@pve!csi"
            token_secret: "s"
            region: r
        """)
        #expect(config.ownerVMID == 4242)
        #expect(config.warnings.count == 1 && config.warnings[0].contains("features.provider (line 2): capmox"))
    }

    @Test func tokenFilesAreReadAsThePluginReadsThem() throws {
        let directory = NSTemporaryDirectory() + "plugin-config-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory + "/cluster1", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "csi@pve!csi\n".write(toFile: directory + "/cluster1/token_id", atomically: true, encoding: .utf8)
        try "from-a-file\n".write(toFile: directory + "/cluster1/token_secret", atomically: true, encoding: .utf8)
        // pkg/config/config_test.go's case, with its paths under the test's folder.
        try """
        clusters:
          - url: https://cluster-api-1.exmple.com:8006/api2/json
            insecure: false
            token_id_file: "\(directory)/cluster1/token_id"
            token_secret_file: "\(directory)/cluster1/token_secret"
            region: cluster-1
        """.write(toFile: directory + "/config.yaml", atomically: true, encoding: .utf8)
        let config = try DriverConfig.load(path: directory + "/config.yaml")
        guard case let .apiToken(id, secret) = config.clusters[0].credentials else { throw SetupError("token expected") }
        #expect(id == "csi@pve!csi" && secret == "from-a-file")
        #expect(config.warnings.isEmpty)
    }

    @Test(arguments: [
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: s\n    colour: red", "clusters[0].colour (line 6)"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: s\nfeatures:\n  newThing: 1", "features.newThing (line 7)"),
        ("clusters:\n  - name: a\n    url: https://pve:8006\n    tokenID: csi@pve!csi\n    tokenSecret: s\nextra: {a: 1}", "extra (line 6)"),
    ])
    func aKeyWithNoMeaningHereIsAcceptedWithOneWarningNamingIt(yaml: String, named: String) throws {
        let config = try DriverConfig.parse(yaml)
        #expect(config.warnings.count == 1)
        #expect(config.warnings.first?.hasPrefix(named + ": not a setting of this driver, ignored") == true)
    }
}
