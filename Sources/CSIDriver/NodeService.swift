import BlockDevice
import CSIProto
import UnaryGRPC

/// The CSI Node service. So far: who this node is. Staging, publishing,
/// expansion and stats come with the block-device layer, and the
/// capabilities claim only what is served.
public struct NodeService: Sendable {
    public let nodeID: String
    /// Resolves this node's VM for its topology; nil without a config.
    let volumes: ProxmoxVolumes?

    /// virtio-scsi has 31 slots; the VM's own disk takes at least one.
    public static let maxVolumesPerNode: Int64 = 30

    public init(nodeID: String, volumes: ProxmoxVolumes?) {
        self.nodeID = nodeID
        self.volumes = volumes
    }

    public func register(into router: inout Router) {
        router.register("/csi.v1.Node/NodeGetCapabilities") { (_: Csi_V1_NodeGetCapabilitiesRequest, _) in
            Csi_V1_NodeGetCapabilitiesResponse()
        }
        router.register("/csi.v1.Node/NodeGetInfo") { (_: Csi_V1_NodeGetInfoRequest, _) in try await getInfo() }
        router.register("/csi.v1.Node/NodeUnpublishVolume") { request, _ in try unpublish(request) }
    }

    /// Unmounts the target if mounted and removes it; a missing target is done.
    func unpublish(_ request: Csi_V1_NodeUnpublishVolumeRequest) throws -> Csi_V1_NodeUnpublishVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard !request.targetPath.isEmpty else { throw RPCError(.invalidArgument, "target_path is required") }
        do {
            try RequestPath.check(request.targetPath)
        } catch {
            throw RPCError(.invalidArgument, "target_path: \(error)")
        }
        do {
            try Unmounter.unmountAndRemove(request.targetPath)
        } catch {
            throw RPCError(.internal, "NodeUnpublishVolume \(request.volumeID): \(error)")
        }
        return .init()
    }

    func getInfo() async throws -> Csi_V1_NodeGetInfoResponse {
        var response = Csi_V1_NodeGetInfoResponse.with {
            $0.nodeID = nodeID
            $0.maxVolumesPerNode = Self.maxVolumesPerNode
        }
        if let volumes {
            do {
                if let vm = try await volumes.vm(forNodeID: nodeID) {
                    response.accessibleTopology = .with {
                        $0.segments = [TopologyKey.region: vm.cluster, TopologyKey.zone: vm.node]
                    }
                }
            } catch {
                throw rpcError(error, "NodeGetInfo: finding the VM of node \(nodeID)")
            }
        }
        return response
    }
}
