import FoundationEssentials
import ProxmoxAPI
import ProxmoxDomain
import TextSupport

/// The driver's config file: which Proxmox clusters to use and how, named
/// storage profiles for StorageClasses, and driver-wide settings.
/// Also reads the config of sergelogvinov/proxmox-csi-plugin
/// (`clusters[].url, insecure, token_id, token_secret, region`).
public struct DriverConfig: Sendable {
    typealias Node = YAMLNode

    public struct Cluster: Sendable {
        /// The topology region (`topology.kubernetes.io/region`).
        public var name: String
        public var url: String
        public var credentials: Credentials
        public var caFile: String?
        public var insecureSkipVerify: Bool

        public func endpoint(requestTimeout: Double) -> ClusterEndpoint {
            ClusterEndpoint(url: url, credentials: credentials,
                            transport: TransportOptions(caFile: caFile, insecureSkipVerify: insecureSkipVerify),
                            requestTimeout: requestTimeout)
        }
    }

    /// Disk options a StorageClass can name with `profile: NAME`.
    public struct Profile: Sendable, Equatable {
        /// The Proxmox storage, for every cluster unless `storagePerCluster` says otherwise.
        public var storage: String?
        public var storagePerCluster: [String: String] = [:]
        public var disk = DiskOptions()
        public var fsType: String?

        public func storage(forCluster cluster: String) -> String? { storagePerCluster[cluster] ?? storage }
    }

    public var clusters: [Cluster]
    public var profiles: [String: Profile]
    /// The vmid that owns the driver's volumes; no real VM should ever get it.
    public var ownerVMID: Int
    public var requestTimeout: Double
    public var taskTimeout: Double
    /// How often the controller asks each cluster whether it answers (Probe).
    public var probeInterval: Double
    /// `driver.snapshots`: storage snapshots where the storage has them (`native`, the
    /// default), or full copies everywhere (`copy`: a snapshot then outlives nothing it shares).
    public var nativeSnapshots = true
    /// Things worth a warning line at start (insecure TLS, plain HTTP).
    public var warnings: [String]

    public struct Error: Swift.Error, CustomStringConvertible, Equatable {
        public let file: String
        public let message: String
        public var description: String { "config \(file): \(message)" }
    }

    public static func load(path: String) throws(Error) -> DriverConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw Error(file: path, message: "cannot read the file (\(error.reason))")
        }
        return try parse(text, file: path, baseDirectory: path.deletingLastPathComponent)
    }

    public static func parse(_ text: String, file: String = "<config>", baseDirectory: String = ".") throws(Error) -> DriverConfig {
        let root: Node?
        do {
            root = try Node.parse(text)
        } catch {
            // The position and the problem, never the line itself (it may hold a secret).
            throw Error(file: file, message: "not valid YAML: \(error)")
        }
        guard let root else { throw Error(file: file, message: "the file is empty") }
        var reader = ConfigReader(file: file, baseDirectory: baseDirectory)
        do {
            return try reader.read(root)
        } catch let error as Error {
            throw error
        } catch {
            throw Error(file: file, message: "\(error)")
        }
    }
}

/// Walks the YAML tree, naming the key path and line of every problem.
private struct ConfigReader {
    typealias Node = YAMLNode

    let file: String
    let baseDirectory: String
    var warnings: [String] = []

    func fail(_ path: String, _ node: Node?, _ problem: String) -> DriverConfig.Error {
        let line = node.map { " (line \($0.line))" } ?? ""
        return DriverConfig.Error(file: file, message: "\(path)\(line): \(problem)")
    }

    /// The keys of a mapping this driver reads. A key it has no meaning for is
    /// skipped with one warning naming it, never refused: a config written for
    /// sergelogvinov/proxmox-csi-plugin (or a newer version of this driver) still loads.
    mutating func mapping(_ node: Node, _ path: String, allowed: Set<String>) throws -> [(String, Node)] {
        guard let mapping = node.mapping else { throw fail(path, node, "expected a mapping of keys to values") }
        var seen = Set<String>()
        var out: [(String, Node)] = []
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw fail(path, keyNode, "keys must be strings") }
            let keyPath = path.isEmpty ? key : "\(path).\(key)"
            guard allowed.contains(key) else {
                warnings.append(fail(keyPath, keyNode, "not a setting of this driver, ignored (it reads \(allowed.sorted().joined(separator: ", ")))").message)
                continue
            }
            guard seen.insert(key).inserted else { throw fail(keyPath, keyNode, "given twice") }
            out.append((key, value))
        }
        return out
    }

    func string(_ node: Node, _ path: String) throws -> String {
        guard node.scalar != nil, let value = node.string, !value.isEmpty else { throw fail(path, node, "expected a non-empty string") }
        return value
    }

    func bool(_ node: Node, _ path: String) throws -> Bool {
        guard let value = node.bool else { throw fail(path, node, "expected true or false") }
        return value
    }

    func int(_ node: Node, _ path: String, _ range: ClosedRange<Int>) throws -> Int {
        guard let value = node.int, range.contains(value) else {
            throw fail(path, node, "expected a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    func seconds(_ node: Node, _ path: String) throws -> Double {
        guard let value = node.float ?? node.int.map(Double.init), value > 0, value <= 86_400 else {
            throw fail(path, node, "expected a number of seconds greater than 0")
        }
        return value
    }

    /// Reads a secret from a file; errors name the file, never its content.
    func secret(fromFile node: Node, _ path: String) throws -> String {
        var name = try string(node, path)
        if !name.hasPrefix("/") { name = baseDirectory + "/" + name }
        guard let text = try? String(contentsOfFile: name, encoding: .utf8) else {
            throw fail(path, node, "cannot read \(name)")
        }
        let value = text.trimmed()
        guard !value.isEmpty else { throw fail(path, node, "\(name) is empty") }
        return value
    }

    mutating func read(_ root: Node) throws -> DriverConfig {
        var clusters: [DriverConfig.Cluster] = []
        var profiles: [String: DriverConfig.Profile] = [:]
        var profileNodes: [(String, Node)] = []
        var ownerVMID = 9999
        var sawOwnerVMID = false
        var requestTimeout = 30.0
        var taskTimeout = 600.0
        var probeInterval = 30.0
        var controllerVMID: (Int, Node)?
        var nativeSnapshots = true
        for (key, value) in try mapping(root, "", allowed: ["clusters", "profiles", "driver", "features"]) {
            switch key {
            case "features":
                // sergelogvinov/proxmox-csi-plugin's pkg/config ClustersFeatures.
                for (feature, node) in try mapping(value, "features", allowed: ["provider", "controllerVmID"]) {
                    if feature == "controllerVmID" {
                        // The plugin's name for the vmid its volume names carry (it wants more than 100).
                        controllerVMID = (try int(node, "features.controllerVmID", 101...999_999_999), node)
                    } else if try oneOf(node, "features.provider", ["default", "capmox"]) == "capmox" {
                        warnings.append(fail("features.provider", node, "capmox changes nothing here: each node's VM is found "
                            + "by its name, vmid or SMBIOS uuid whoever created it").message)
                    }
                }
            case "clusters":
                guard let items = value.sequence, !items.isEmpty else {
                    throw fail("clusters", value, "expected a list with at least one cluster")
                }
                for (index, item) in items.enumerated() {
                    clusters.append(try cluster(item, "clusters[\(index)]"))
                }
            case "profiles":
                profileNodes = try mapping(value, "profiles", allowed: Set(value.mapping?.compactMap(\.key.string) ?? []))
            default:
                for (setting, node) in try mapping(value, "driver", allowed: ["ownerVMID", "requestTimeout", "taskTimeout", "probeInterval",
                                                                         "snapshots"]) {
                    switch setting {
                    case "snapshots": nativeSnapshots = try oneOf(node, "driver.snapshots", ["native", "copy"]) == "native"
                    case "ownerVMID":
                        ownerVMID = try int(node, "driver.ownerVMID", 100...999_999_999)
                        sawOwnerVMID = true
                    case "requestTimeout": requestTimeout = try seconds(node, "driver.requestTimeout")
                    case "probeInterval": probeInterval = try seconds(node, "driver.probeInterval")
                    default: taskTimeout = try seconds(node, "driver.taskTimeout")
                    }
                }
            }
        }
        guard !clusters.isEmpty else { throw fail("clusters", nil, "missing: the config must name at least one Proxmox cluster") }
        if let (vmid, node) = controllerVMID {
            guard !sawOwnerVMID || vmid == ownerVMID else {
                throw fail("features.controllerVmID", node, "\(vmid) differs from driver.ownerVMID \(ownerVMID): they name the same vmid, give one")
            }
            ownerVMID = vmid
        }
        var names = Set<String>()
        for cluster in clusters where !names.insert(cluster.name).inserted {
            throw fail("clusters", nil, "two clusters are named \"\(cluster.name)\"")
        }
        for (name, node) in profileNodes {
            profiles[name] = try profile(node, "profiles.\(name)", clusters: names)
        }
        var config = DriverConfig(clusters: clusters, profiles: profiles, ownerVMID: ownerVMID,
                                  requestTimeout: requestTimeout, taskTimeout: taskTimeout, probeInterval: probeInterval,
                                  warnings: warnings)
        config.nativeSnapshots = nativeSnapshots
        return config
    }

    mutating func cluster(_ node: Node, _ path: String) throws -> DriverConfig.Cluster {
        // Our spelling, and sergelogvinov/proxmox-csi-plugin's.
        let allowed: Set<String> = ["name", "region", "url", "tokenID", "token_id", "tokenIDFile", "token_id_file",
                                    "tokenSecret", "token_secret", "tokenSecretFile", "token_secret_file",
                                    "username", "password", "passwordFile", "caFile", "insecureSkipVerify", "insecure"]
        var values: [String: Node] = [:]
        for (key, value) in try mapping(node, path, allowed: allowed) {
            let canonical = ["region": "name", "token_id": "tokenID", "token_secret": "tokenSecret",
                             "token_id_file": "tokenIDFile", "token_secret_file": "tokenSecretFile",
                             "insecure": "insecureSkipVerify"][key] ?? key
            if values[canonical] != nil { throw fail("\(path).\(key)", value, "given twice under two spellings") }
            values[canonical] = value
        }
        guard let nameNode = values["name"] else { throw fail("\(path).name", node, "missing (the cluster's region name)") }
        let name = try string(nameNode, "\(path).name")
        guard name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
            throw fail("\(path).name", nameNode, "use letters, digits, '-', '_' and '.' only")
        }
        guard let urlNode = values["url"] else { throw fail("\(path).url", node, "missing") }
        let url = try string(urlNode, "\(path).url")
        guard let parsed = URL(string: url), let scheme = parsed.scheme, ["https", "http"].contains(scheme), parsed.host != nil else {
            throw fail("\(path).url", urlNode, "expected https://HOST:8006")
        }
        if scheme == "http" {
            warnings.append("\(path).url uses plain http: credentials travel unencrypted")
        }

        let credentials: Credentials
        let hasToken = values["tokenID"] != nil || values["tokenIDFile"] != nil
        let hasUser = values["username"] != nil
        switch (hasToken, hasUser) {
        case (true, false):
            let id: String
            switch (values["tokenID"], values["tokenIDFile"]) {
            case let (inline?, nil): id = try string(inline, "\(path).tokenID")
            case let (nil, file?): id = try secret(fromFile: file, "\(path).tokenIDFile")
            default: throw fail("\(path).tokenID", node, "give tokenID or tokenIDFile, not both")
            }
            let idNode = values["tokenID"] ?? values["tokenIDFile"]
            guard id.wholeMatch(of: #/[^\s:\/!]+![A-Za-z][A-Za-z0-9.\-_]+/#) != nil else {
                throw fail("\(path).tokenID", idNode, "expected USER@REALM!TOKENNAME, e.g. csi@pve!csi")
            }
            // proxmox-csi-plugin's own configs write USER!TOKEN (no realm); it loads, Proxmox decides.
            if id.prefixMatch(of: #/[^\s:\/@!]+@[A-Za-z][A-Za-z0-9.\-_]+!/#) == nil {
                warnings.append(fail("\(path).tokenID", idNode, "\"\(id)\" names no realm (USER@REALM!TOKENNAME, e.g. csi@pve!csi): "
                    + "Proxmox will likely refuse it").message)
            }
            let secret: String
            switch (values["tokenSecret"], values["tokenSecretFile"]) {
            case let (inline?, nil): secret = try string(inline, "\(path).tokenSecret")
            case let (nil, file?): secret = try self.secret(fromFile: file, "\(path).tokenSecretFile")
            case (nil, nil): throw fail("\(path).tokenSecret", node, "missing: give tokenSecret or tokenSecretFile")
            default: throw fail("\(path).tokenSecret", node, "give tokenSecret or tokenSecretFile, not both")
            }
            credentials = .apiToken(id: id, secret: secret)
        case (false, true):
            let user = try string(values["username"]!, "\(path).username")
            let password: String
            switch (values["password"], values["passwordFile"]) {
            case let (inline?, nil): password = try string(inline, "\(path).password")
            case let (nil, file?): password = try secret(fromFile: file, "\(path).passwordFile")
            default: throw fail("\(path).password", node, "give exactly one of password or passwordFile")
            }
            credentials = .password(user: user, password: password)
        case (true, true):
            throw fail(path, node, "give either an API token (tokenID) or a username, not both")
        case (false, false):
            throw fail(path, node, "missing credentials: give tokenID and tokenSecret (recommended) or username and password")
        }

        var caFile: String?
        if let node = values["caFile"] {
            var file = try string(node, "\(path).caFile")
            if !file.hasPrefix("/") { file = baseDirectory + "/" + file }
            guard FileManager.default.isReadableFile(atPath: file) else { throw fail("\(path).caFile", node, "cannot read \(file)") }
            caFile = file
        }
        let insecure = try values["insecureSkipVerify"].map { try bool($0, "\(path).insecureSkipVerify") } ?? false
        if insecure {
            warnings.append("\(path): insecureSkipVerify is on: the server's TLS certificate is not checked")
        }
        return DriverConfig.Cluster(name: name, url: url, credentials: credentials, caFile: caFile, insecureSkipVerify: insecure)
    }

    mutating func profile(_ node: Node, _ path: String, clusters: Set<String>) throws -> DriverConfig.Profile {
        var profile = DriverConfig.Profile()
        let keys: Set<String> = ["storage", "storages", "bus", "cache", "ssd", "discard", "iothread", "backup",
                                 "iops", "mbps", "fsType", "aio"]
        for (key, value) in try mapping(node, path, allowed: keys) {
            let keyPath = "\(path).\(key)"
            switch key {
            case "storage": profile.storage = try storageID(value, keyPath)
            case "storages":
                for (cluster, storage) in try mapping(value, keyPath, allowed: clusters) {
                    profile.storagePerCluster[cluster] = try storageID(storage, "\(keyPath).\(cluster)")
                }
            case "bus": profile.disk.bus = try oneOf(value, keyPath, ["scsi", "virtio"])
            case "cache": profile.disk.cache = try oneOf(value, keyPath, ["none", "writethrough", "writeback", "directsync", "unsafe"])
            case "aio": profile.disk.aio = try oneOf(value, keyPath, ["native", "threads", "io_uring"])
            case "fsType": profile.fsType = try oneOf(value, keyPath, ["xfs", "ext4"])
            case "ssd": profile.disk.ssd = try bool(value, keyPath)
            case "discard": profile.disk.discard = try bool(value, keyPath)
            case "iothread": profile.disk.iothread = try bool(value, keyPath)
            case "backup": profile.disk.backup = try bool(value, keyPath)
            case "iops": profile.disk.iops = try int(value, keyPath, 1...10_000_000)
            default: profile.disk.mbps = try int(value, keyPath, 1...100_000)
            }
        }
        if profile.storage == nil, !clusters.isSubset(of: Set(profile.storagePerCluster.keys)) {
            let missing = clusters.subtracting(profile.storagePerCluster.keys).sorted().joined(separator: ", ")
            throw fail("\(path).storage", node, "missing: name a storage for every cluster (none for \(missing))")
        }
        return profile
    }

    func storageID(_ node: Node, _ path: String) throws -> String {
        let value = try string(node, path)
        guard VolumeHandle.isStorageID(value) else {
            throw fail(path, node, "\"\(value)\" is not a Proxmox storage id (lowercase letters, digits, '-', '_', '.')")
        }
        return value
    }

    func oneOf(_ node: Node, _ path: String, _ choices: [String]) throws -> String {
        let value = try string(node, path)
        guard choices.contains(value) else { throw fail(path, node, "expected one of \(choices.joined(separator: ", "))") }
        return value
    }
}
