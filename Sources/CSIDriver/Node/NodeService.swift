import BlockDevice
import CSIProto
import ProxmoxDomain
import UnaryGRPC

/// Where the node service looks and what it may touch.
public struct NodeSettings: Sendable {
    /// This node's name as Kubernetes knows it.
    public var nodeName: String
    /// sysfs (`/sys`); the simulator's local mode and tests point it elsewhere.
    public var sysRoot = "/sys"
    /// Device nodes (`/dev`).
    public var devRoot = "/dev"
    /// Request paths must lie inside one of these: what kubelet hands out.
    public var allowedRoots = ["/var/lib/kubelet"]
    /// Topology when the node cannot ask Proxmox (no config): cluster and Proxmox node.
    public var region: String?
    public var zone: String?
    /// How long NodeStage waits for a hot-plugged disk to appear.
    public var deviceWaitSeconds: Double = 60
    /// Where the disk identity of each staged volume is kept (nil: in memory only).
    public var stateDirectory: String?
    /// The Kubernetes API, for this node's labels (nil outside a pod).
    public var kubernetes: KubernetesNodeLabels?
    /// The CSI driver name, which names this driver's node labels.
    public var driverName = DriverInfo.defaultName

    public init(nodeName: String) {
        self.nodeName = nodeName
    }
}

/// The CSI Node service: finds the volume's disk on this VM, formats it only
/// when blank, mounts, binds, grows and reports it. Calls for one volume run
/// one at a time, so two stages never race to format the same disk.
public struct NodeService: Sendable {
    let settings: NodeSettings
    /// Resolves this node's VM for its id and topology; nil without a config.
    let volumes: ProxmoxVolumes?
    let finder: DeviceFinder
    let format: SafeFormat
    let mounter: Mounter
    let luks: LUKS
    let volumeLocks = KeyedSerializer<String>()
    let identities: NodeIdentities

    public var nodeID: String { settings.nodeName }

    public static let capabilities: [Csi_V1_NodeServiceCapability.RPC.TypeEnum] = [
        .stageUnstageVolume, .expandVolume, .getVolumeStats, .volumeCondition, .singleNodeMultiWriter,
    ]

    public init(settings: NodeSettings, volumes: ProxmoxVolumes?, runner: any CommandRunning = ProcessRunner()) {
        self.settings = settings
        self.volumes = volumes
        finder = DeviceFinder(sysRoot: settings.sysRoot, devRoot: settings.devRoot)
        format = SafeFormat(runner: runner)
        mounter = Mounter(runner: runner)
        luks = LUKS(runner: runner)
        identities = NodeIdentities(directory: settings.stateDirectory)
    }

    public func register(into router: inout Router) {
        router.registerImmediate("/csi.v1.Node/NodeGetCapabilities") { (_: Csi_V1_NodeGetCapabilitiesRequest, _) in
            Csi_V1_NodeGetCapabilitiesResponse.with {
                $0.capabilities = Self.capabilities.map { type in .with { $0.rpc.type = type } }
            }
        }
        router.register("/csi.v1.Node/NodeGetInfo") { (_: Csi_V1_NodeGetInfoRequest, context) in try await getInfo(logger: context.logger) }
        router.register("/csi.v1.Node/NodeStageVolume") { request, _ in try await stage(request) }
        router.register("/csi.v1.Node/NodeUnstageVolume") { request, _ in try await unstage(request) }
        router.register("/csi.v1.Node/NodePublishVolume") { request, _ in try await publish(request) }
        router.register("/csi.v1.Node/NodeUnpublishVolume") { request, _ in try await unpublish(request) }
        router.register("/csi.v1.Node/NodeExpandVolume") { request, _ in try await expand(request) }
        // stat, statvfs, mountinfo and sysfs reads: on the event loop, no task (a Proxmox
        // lookup of an unrecorded volume's identity awaits there without holding the loop).
        router.registerOnLoop("/csi.v1.Node/NodeGetVolumeStats") { request, _ in try volumeStats(request) }
    }

    /// Runs `body` while no other call works on `volumeID`.
    func serialized<T: Sendable>(_ volumeID: String, _ body: @Sendable () async throws -> T) async throws -> T {
        try await volumeLocks.run(volumeID, body)
    }
}
