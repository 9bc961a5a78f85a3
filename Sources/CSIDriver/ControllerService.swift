import CSIProto
import Foundation
import ProxmoxAPI
import SwiftProtobuf
import UnaryGRPC

public enum TopologyKey {
    public static let region = "topology.kubernetes.io/region"
    public static let zone = "topology.kubernetes.io/zone"
}

/// The CSI Controller service: thin translations of CSI onto ProxmoxVolumes.
public struct ControllerService: Sendable {
    let volumes: ProxmoxVolumes
    var config: DriverConfig { volumes.config }

    static let mebibyte: Int64 = 1 << 20
    static let gibibyte: Int64 = 1 << 30
    /// Sizes are rounded up to this: LVM's extent size, a multiple of every other storage's granule.
    static let allocationUnit: Int64 = 4 * mebibyte

    public init(volumes: ProxmoxVolumes) {
        self.volumes = volumes
    }

    public static let capabilities: [Csi_V1_ControllerServiceCapability.RPC.TypeEnum] = [
        .createDeleteVolume, .publishUnpublishVolume, .listVolumes, .listVolumesPublishedNodes,
        .getCapacity, .publishReadonly, .singleNodeMultiWriter, .expandVolume, .getVolume, .volumeCondition,
        .createDeleteSnapshot, .listSnapshots, .cloneVolume, .modifyVolume,
    ]

    public func register(into router: inout Router) {
        // Calls that change where a volume is attached, or whether it exists, run one at a time per
        // volume; concurrent calls with one name wait for each other and give the same answer
        // (the way aws-ebs-csi-driver's inflight.go keeps duplicates apart).
        let one = volumes.volumeLocks
        router.register("/csi.v1.Controller/CreateVolume") { request, _ in
            try await one.run("create/\(request.name)") { try await createVolume(request) }
        }
        router.register("/csi.v1.Controller/DeleteVolume") { request, _ in try await one.run(request.volumeID) { try await deleteVolume(request) } }
        router.register("/csi.v1.Controller/ControllerPublishVolume") { request, _ in try await one.run(request.volumeID) { try await publish(request) } }
        router.register("/csi.v1.Controller/ControllerUnpublishVolume") { request, _ in
            try await one.run(request.volumeID) { try await unpublish(request) }
        }
        router.register("/csi.v1.Controller/ValidateVolumeCapabilities") { request, _ in try await validate(request) }
        router.register("/csi.v1.Controller/ListVolumes") { request, _ in try await listVolumes(request) }
        router.register("/csi.v1.Controller/GetCapacity") { request, _ in try await getCapacity(request) }
        router.register("/csi.v1.Controller/ControllerExpandVolume") { request, _ in try await one.run(request.volumeID) { try await expand(request) } }
        router.register("/csi.v1.Controller/ControllerGetVolume") { request, _ in try await getVolume(request) }
        registerSnapshots(into: &router)
        router.register("/csi.v1.Controller/ControllerModifyVolume") { request, _ in try await one.run(request.volumeID) { try await modify(request) } }
        router.register("/csi.v1.Controller/ControllerGetCapabilities") { (_: Csi_V1_ControllerGetCapabilitiesRequest, _) in
            Csi_V1_ControllerGetCapabilitiesResponse.with {
                $0.capabilities = Self.capabilities.map { type in .with { $0.rpc.type = type } }
            }
        }
    }

    // MARK: - CreateVolume

    func createVolume(_ request: Csi_V1_CreateVolumeRequest) async throws -> Csi_V1_CreateVolumeResponse {
        guard !request.name.isEmpty else { throw RPCError(.invalidArgument, "name is required") }
        try CapabilityCheck.require(request.volumeCapabilities, field: "volume_capabilities")
        let bytes = try Self.size(for: request.capacityRange)
        let cluster = try chooseCluster(request.accessibilityRequirements)
        // A VolumeAttributesClass given at creation sets the same options a later modify would.
        try VolumeParameters.checkMutable(request.mutableParameters, config: config, cluster: cluster)
        let parameters = try VolumeParameters.parse(request.parameters.merging(request.mutableParameters) { $1 },
                                                    config: config, cluster: cluster)
        let what = "CreateVolume \(request.name)"
        do {
            if request.hasVolumeContentSource {
                return try await createVolumeFromSource(request, cluster: cluster, parameters: parameters)
            }
            guard let storage = try await volumes.storage(cluster, parameters.storage) else {
                throw RPCError(.invalidArgument, "StorageClass parameter \"storage\": no storage \"\(parameters.storage)\" in cluster \"\(cluster)\"")
            }
            if let copy = try await volumes.copyVM(.volume, csiName: request.name, cluster: cluster, fresh: false) {
                throw RPCError(.alreadyExists, "volume \(request.name) exists as a copy of \(copy.source); this request names no content source")
            }
            let name = VolumeNaming.volumeName(forCSIName: request.name, ownerVMID: config.ownerVMID, storageType: storage.type)
            // A retry must find what an earlier attempt created, on whichever node.
            let candidates = storage.shared ? [nil] : storage.available.keys.sorted().map(Optional.some)
            for node in candidates {
                let handle = VolumeHandle(cluster: cluster, node: node, storage: storage.id, volume: name)
                if let existing = try await volumes.size(of: handle, storage: storage) {
                    guard Self.fits(existing, request.capacityRange) else {
                        throw RPCError(.alreadyExists, "volume \(request.name) exists as \(handle) with \(existing) bytes, "
                            + "outside the requested range (required \(request.capacityRange.requiredBytes), limit \(request.capacityRange.limitBytes))")
                    }
                    return createdVolume(handle, bytes: existing, storage: storage, parameters: parameters)
                }
            }
            let node = try chooseNode(storage, cluster: cluster, requirements: request.accessibilityRequirements, bytes: bytes)
            let handle = VolumeHandle(cluster: cluster, node: storage.shared ? nil : node, storage: storage.id, volume: name)
            try await volumes.allocate(handle, storage: storage, node: node, bytes: bytes)
            return createdVolume(handle, bytes: bytes, storage: storage, parameters: parameters)
        } catch {
            throw rpcError(error, what)
        }
    }

    func createdVolume(_ handle: VolumeHandle, bytes: Int64, storage: StorageRef,
                          parameters: VolumeParameters) -> Csi_V1_CreateVolumeResponse {
        .with {
            $0.volume.volumeID = handle.description
            $0.volume.capacityBytes = bytes
            $0.volume.volumeContext = parameters.context
            $0.volume.accessibleTopology = [.with {
                $0.segments = handle.node.map { [TopologyKey.region: handle.cluster, TopologyKey.zone: $0] }
                    ?? [TopologyKey.region: handle.cluster]
            }]
        }
    }

    /// The bytes to allocate: at least `required`, at most `limit`, 1 GiB when neither is given.
    static func size(for range: Csi_V1_CapacityRange) throws(RPCError) -> Int64 {
        let required = range.requiredBytes
        let limit = range.limitBytes
        guard required >= 0 else { throw RPCError(.invalidArgument, "capacity_range.required_bytes cannot be negative (\(required))") }
        guard limit >= 0 else { throw RPCError(.invalidArgument, "capacity_range.limit_bytes cannot be negative (\(limit))") }
        if limit > 0, required > limit {
            throw RPCError(.invalidArgument, "capacity_range: required_bytes \(required) exceeds limit_bytes \(limit)")
        }
        let wanted = required > 0 ? required : (limit > 0 ? min(gibibyte, limit) : gibibyte)
        let rounded = (wanted + allocationUnit - 1) / allocationUnit * allocationUnit
        if limit > 0, rounded > limit {
            throw RPCError(.outOfRange, "capacity_range: the storage allocates in \(allocationUnit / mebibyte) MiB units; "
                + "no size between \(required) and \(limit) bytes fits")
        }
        return rounded
    }

    static func fits(_ bytes: Int64, _ range: Csi_V1_CapacityRange) -> Bool {
        bytes >= range.requiredBytes && (range.limitBytes == 0 || bytes <= range.limitBytes)
    }

    /// The cluster a region requirement names, else the first configured one.
    func chooseCluster(_ requirements: Csi_V1_TopologyRequirement) throws(RPCError) -> String {
        let regions = (requirements.preferred + requirements.requisite).compactMap { $0.segments[TopologyKey.region] }
        for region in regions where config.clusters.contains(where: { $0.name == region }) {
            return region
        }
        if !regions.isEmpty {
            throw RPCError(.invalidArgument, "accessibility_requirements: no configured cluster for region(s) \(Set(regions).sorted())")
        }
        return config.clusters[0].name
    }

    /// Preferred zones first, then the node with most free space; requisite zones limit the choice.
    func chooseNode(_ storage: StorageRef, cluster: String, requirements: Csi_V1_TopologyRequirement, bytes: Int64) throws(RPCError) -> String {
        func zone(_ topology: Csi_V1_Topology) -> String? {
            if let region = topology.segments[TopologyKey.region], region != cluster { return nil }
            return topology.segments[TopologyKey.zone]
        }
        var nodes = storage.available.filter { $0.value >= bytes }.map(\.key)
        if !requirements.requisite.isEmpty, !storage.shared {
            let allowed = Set(requirements.requisite.compactMap(zone))
            if !allowed.isEmpty { nodes = nodes.filter(allowed.contains) }
        }
        guard !nodes.isEmpty else {
            throw RPCError(.resourceExhausted, "no node can hold \(bytes) bytes on storage \"\(storage.id)\" within the requested topology")
        }
        let preferred = requirements.preferred.compactMap(zone)
        if let first = preferred.first(where: nodes.contains) { return first }
        return nodes.max { (storage.available[$0] ?? 0, $1) < (storage.available[$1] ?? 0, $0) }!
    }

    // MARK: - DeleteVolume

    func deleteVolume(_ request: Csi_V1_DeleteVolumeRequest) async throws -> Csi_V1_DeleteVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        // An id this driver never made names no volume: deleting it is done.
        do {
            guard let (handle, storage) = try await volumes.locate(request.volumeID) else { return .init() }
            let attachments = try await volumes.attachments(of: handle, storage: storage)
            if let (vm, key) = try await volumes.releaseFromHolders(handle, storage: storage, attachments: attachments).first {
                throw RPCError(.failedPrecondition, "volume \(handle) is still attached to VM \(vm.vmid) (\(vm.name)) as \(key); "
                    + "unpublish it first")
            }
            if let recorded = try await volumes.copyVM(.options, csiName: request.volumeID, cluster: handle.cluster) {
                try await volumes.destroy(recorded)
            }
            // A restored or cloned volume belongs to its record VM: destroying that frees it.
            if let record = try await recordVM(of: handle) {
                try await volumes.destroy(record)
                return .init()
            }
            try await volumes.delete(handle, storage: storage)
            return .init()
        } catch {
            throw rpcError(error, "DeleteVolume \(request.volumeID)")
        }
    }

    // MARK: - Publish / unpublish

    func publish(_ request: Csi_V1_ControllerPublishVolumeRequest) async throws -> Csi_V1_ControllerPublishVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard !request.nodeID.isEmpty else { throw RPCError(.invalidArgument, "node_id is required") }
        guard request.hasVolumeCapability else { throw RPCError(.invalidArgument, "volume_capability is required") }
        try CapabilityCheck.require([request.volumeCapability], field: "volume_capability")
        let what = "ControllerPublishVolume \(request.volumeID) to \(request.nodeID)"
        do {
            guard let (handle, storage, _) = try await volumes.existing(request.volumeID) else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
            guard let vm = try await volumes.vm(forNodeID: request.nodeID) else {
                throw RPCError(.notFound, "node \(request.nodeID): no Proxmox VM with that name or vmid")
            }
            guard vm.cluster == handle.cluster else {
                throw RPCError(.failedPrecondition, "volume is in cluster \(handle.cluster), node \(request.nodeID) in \(vm.cluster)")
            }
            if let node = handle.node, node != vm.node {
                throw RPCError(.failedPrecondition, "volume lives on local storage of Proxmox node \(node); "
                    + "VM \(vm.vmid) runs on \(vm.node)")
            }
            // The context CreateVolume returned carries the StorageClass's disk options;
            // volumes made by other drivers carry other keys, which are ignored.
            var context = request.volumeContext.filter { VolumeParameters.knownKeys.contains($0.key) && $0.key != "profile" }
            context["storage"] = handle.storage
            // Options changed by ControllerModifyVolume since creation win.
            if let recorded = try await volumes.copyVM(.options, csiName: request.volumeID, cluster: handle.cluster, fresh: false) {
                context.merge(recorded.options) { $1 }
            }
            let parameters = try VolumeParameters.parse(context, config: config, cluster: handle.cluster)
            let attachments = try await volumes.attachments(of: handle, storage: storage)
            let elsewhere = try await volumes.releaseFromHolders(handle, storage: storage, attachments: attachments).filter { $0.0 != vm }
            if let (other, key) = elsewhere.first {
                throw RPCError(.failedPrecondition, "volume is attached to VM \(other.vmid) (\(other.name)) as \(key)")
            }
            let bus = parameters.bus
            let slot = try await attach(handle, storage: storage, to: vm, bus: bus, readonly: request.readonly,
                                        options: parameters.diskOptions)
            var publishContext = ["serial": VolumeNaming.serial(for: handle), "bus": bus]
            if bus == "scsi" {
                publishContext["wwn"] = VolumeNaming.wwn(for: handle)
                // qemu-server puts scsiN at LUN N (print_drivedevice_full): the node scans just that LUN
                // if the guest missed the hot-plug event.
                if let lun = Int(slot.dropFirst(bus.count)) { publishContext["lun"] = String(lun) }
            }
            return .with { $0.publishContext = publishContext }
        } catch {
            throw rpcError(error, what)
        }
    }

    /// Returns the slot (config key) the volume is in.
    private func attach(_ handle: VolumeHandle, storage: StorageRef, to vm: VMRef, bus: String, readonly: Bool,
                        options: [(String, String)]) async throws -> String {
        let volid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
        var value = [volid, "serial=\(VolumeNaming.serial(for: handle))"]
        if bus == "scsi" { value.append("wwn=\(VolumeNaming.wwn(for: handle))") }
        value += options.map { "\($0.0)=\($0.1)" }
        if readonly { value.append("ro=1") }
        let diskValue = value.joined(separator: ",")
        let written = try await volumes.editConfig(vm) { draft in
            if let (key, value) = ProxmoxVolumes.disks(holding: volid, in: draft.values).first {
                let attachedReadonly = value.split(separator: ",").contains("ro=1")
                guard attachedReadonly == readonly else {
                    throw RPCError(.alreadyExists, "volume is attached to VM \(vm.vmid) as \(key) with readonly=\(attachedReadonly)")
                }
                if draft.config.values[key] == nil {
                    draft.resend.insert(key)  // pending only: its hot-plug is tried again
                } else if draft.config.pendingDelete.contains(key) {
                    draft.revert.insert(key)  // a detach left pending: keep the disk instead
                }
                return  // otherwise already there: publishing again changes nothing
            }
            let limit = bus == "virtio" ? 16 : 31
            let slots = (0..<limit).map { "\(bus)\($0)" }
            guard let slot = slots.first(where: draft.isFree) else {
                // A detach in this batch frees one: take it in the next write.
                if slots.contains(where: draft.isFreedInThisBatch) { throw ConfigBatches.NextWrite() }
                throw RPCError(.resourceExhausted, "VM \(vm.vmid) has no free \(bus) slot (\(limit) in use)")
            }
            draft.values[slot] = diskValue
        }
        return try await confirmAttached(volid, to: written)
    }

    /// Publish answers OK only once the disk is in the VM's current config,
    /// which the running VM has: Proxmox leaves an attach it could not
    /// hot-plug pending (qemu-server vmconfig_hotplug_pending), and the VM
    /// would get the disk only when it restarts. The way aws-ebs-csi-driver
    /// waits for the attachment state before answering.
    private func confirmAttached(_ volid: String, to written: VMRef) async throws -> String {
        guard let (vm, after) = try await volumes.currentConfig(written) else {
            throw RPCError(.notFound, "VM \(written.vmid) (\(written.name)) is on no Proxmox node any more")
        }
        let keys = ProxmoxVolumes.disks(holding: volid, in: after)
        if let attached = keys.first(where: { after.values[$0] != nil && after.isSettled($0) }) { return attached }
        guard let key = keys.first else {
            throw RPCError(.unavailable, "the attach of \(volid) to VM \(vm.vmid) (\(vm.name)) did not reach its config; try again")
        }
        if let hotplug = Self.hotplugWithoutDisk(after) {
            // Nothing is left for the VM's next start: the pending attach is dropped.
            _ = try await volumes.editConfig(vm) { draft in draft.revert.insert(key) }
            throw RPCError(.failedPrecondition, "VM \(vm.vmid) (\(vm.name)) has hotplug \"\(hotplug)\", which leaves out disk: "
                + "Proxmox cannot attach a disk while it runs. Add disk to the VM's hotplug option "
                + "(qm set \(vm.vmid) --hotplug \(hotplug.isEmpty || hotplug == "0" ? "" : hotplug + ",")disk)")
        }
        throw RPCError(.unavailable, "Proxmox left the attach of \(volid) to VM \(vm.vmid) (\(vm.name)) as \(key) pending: "
            + "the hot-plug did not happen (the VM's task log says why); it is tried again on the next call")
    }

    /// The VM's `hotplug` option when it leaves out disks (qemu-server
    /// parse_hotplug_features: default network,disk,usb; 1 = that; 0 = none).
    static func hotplugWithoutDisk(_ config: VMConfig) -> String? {
        let hotplug = config.values["hotplug"] ?? "network,disk,usb"
        if hotplug == "1" { return nil }
        return hotplug.split(separator: ",").contains("disk") ? nil : hotplug
    }

    func unpublish(_ request: Csi_V1_ControllerUnpublishVolumeRequest) async throws -> Csi_V1_ControllerUnpublishVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        do {
            // A volume or VM that no longer exists is not attached: done.
            guard let (handle, storage) = try await volumes.locate(request.volumeID) else { return .init() }
            let volid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
            // No node_id: detach from every node's VM (the spec's "unpublish from all nodes").
            let targets: [VMRef]
            if request.nodeID.isEmpty {
                targets = Array(Set(try await volumes.attachments(of: handle, storage: storage).map(\.0).filter { !ProxmoxVolumes.isHolder($0) }))
            } else {
                guard let vm = try await volumes.vm(forNodeID: request.nodeID) else { return .init() }
                targets = [vm]
            }
            for vm in targets.sorted(by: { $0.vmid < $1.vmid }) {
                let written: VMRef
                do {
                    written = try await volumes.editConfig(vm) { draft in
                        for key in ProxmoxVolumes.disks(holding: volid, in: draft.config) { draft.values[key] = nil }
                    }
                } catch ProxmoxError.notFound {
                    continue  // the VM is on no node (the batch looked afresh): nothing is attached any more
                }
                try await confirmDetached(volid, from: written)
            }
            return .init()
        } catch {
            throw rpcError(error, "ControllerUnpublishVolume \(request.volumeID) from \(request.nodeID)")
        }
    }

    /// Unpublish answers OK only when neither the current config nor a
    /// pending change holds the disk: a detach Proxmox could not hot-unplug
    /// stays pending while the running VM keeps the disk.
    private func confirmDetached(_ volid: String, from written: VMRef) async throws {
        guard let (vm, after) = try await volumes.currentConfig(written) else { return }  // the VM is gone: nothing is attached
        guard let key = ProxmoxVolumes.disks(holding: volid, in: after).first else { return }
        if after.values[key] != nil, let hotplug = Self.hotplugWithoutDisk(after) {
            throw RPCError(.failedPrecondition, "VM \(vm.vmid) (\(vm.name)) has hotplug \"\(hotplug)\", which leaves out disk: "
                + "the volume stays attached as \(key) until the VM restarts (Proxmox keeps the detach pending). "
                + "Add disk to the VM's hotplug option or restart the VM")
        }
        throw RPCError(.unavailable, "volume \(volid) is still attached to VM \(vm.vmid) (\(vm.name)) as \(key): "
            + "Proxmox left the detach pending (the hot-unplug did not happen; the VM's task log says why); it is tried again on the next call")
    }

    // MARK: - Expand

    /// Grows the disk: through the VM it is attached to (online), else through
    /// the node's holder VM (offline). The filesystem is grown by the node.
    func expand(_ request: Csi_V1_ControllerExpandVolumeRequest) async throws -> Csi_V1_ControllerExpandVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard request.hasCapacityRange else { throw RPCError(.invalidArgument, "capacity_range is required") }
        let bytes = try Self.size(for: request.capacityRange)
        // A block volume has no filesystem for the node to grow.
        let isBlock: Bool
        if case .block? = request.volumeCapability.accessType { isBlock = true } else { isBlock = false }
        let needsNode = !isBlock
        let what = "ControllerExpandVolume \(request.volumeID)"
        do {
            guard let (handle, storage, current) = try await volumes.existing(request.volumeID) else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
            if current >= bytes {
                // Already that large (a retry, or a request to shrink, which the limit forbids).
                if request.capacityRange.limitBytes > 0, current > request.capacityRange.limitBytes {
                    throw RPCError(.outOfRange, "volume is \(current) bytes, more than limit_bytes \(request.capacityRange.limitBytes); shrinking is not supported")
                }
                return .with { $0.capacityBytes = current; $0.nodeExpansionRequired = needsNode }
            }
            if let free = storage.available[handle.node ?? storage.available.keys.sorted().first ?? ""], bytes - current > free {
                throw RPCError(.outOfRange, "storage \(storage.id) has \(free) bytes free; growing by \(bytes - current) does not fit")
            }
            let size = "\(bytes >> 20)M"
            let client = try volumes.client(handle.cluster)
            let attachments = try await volumes.releaseFromHolders(handle, storage: storage,
                                                                   attachments: volumes.attachments(of: handle, storage: storage))
            if let (vm, key) = attachments.first {
                try await volumes.changingVM(vm) {
                    try await client.resize(node: vm.node, vmid: vm.vmid, disk: key, size: size)
                }
            } else {
                // Detached (a restored volume too: its record VM holds it only as unused0, which resize cannot name).
                let node = handle.node ?? storage.available.keys.sorted().first ?? ""
                try await volumes.withHolder(handle, storage: storage, node: node) { holder, key in
                    try await client.resize(node: holder.node, vmid: holder.vmid, disk: key, size: size)
                }
            }
            volumes.invalidate(handle.cluster)
            return .with { $0.capacityBytes = bytes; $0.nodeExpansionRequired = needsNode }
        } catch {
            throw rpcError(error, what)
        }
    }

    // MARK: - ModifyVolume

    /// Changes a volume's mutable options (VolumeAttributesClass): recorded for
    /// every later attach, and applied at once to the VM it is attached to.
    func modify(_ request: Csi_V1_ControllerModifyVolumeRequest) async throws -> Csi_V1_ControllerModifyVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard !request.mutableParameters.isEmpty else {
            throw RPCError(.invalidArgument, "mutable_parameters is required (the VolumeAttributesClass's parameters)")
        }
        do {
            guard let (handle, storage, _) = try await volumes.existing(request.volumeID) else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
            try VolumeParameters.checkMutable(request.mutableParameters, config: config, cluster: handle.cluster)
            let node = handle.node ?? storage.available.keys.sorted().first ?? ""
            try await volumes.recordOptions(request.mutableParameters, volumeID: request.volumeID, cluster: handle.cluster, node: node)

            let recorded = try await volumes.copyVM(.options, csiName: request.volumeID, cluster: handle.cluster)?.options
                ?? request.mutableParameters
            let changed = try VolumeParameters.parse(recorded.merging(["storage": handle.storage]) { a, _ in a },
                                                     config: config, cluster: handle.cluster).diskOptions
            let replaced: Set<String> = ["cache", "backup", "iops_rd", "iops_wr", "mbps_rd", "mbps_wr"]
            let volid = handle.volid(ownerVMID: config.ownerVMID, storageType: storage.type)
            for (vm, _) in try await volumes.attachments(of: handle, storage: storage) where !ProxmoxVolumes.isHolder(vm) {
                try await volumes.editConfig(vm) { draft in
                    guard let (key, value) = ProxmoxVolumes.disks(holding: volid, in: draft.values).first else { return }
                    let kept = value.split(separator: ",").dropFirst().filter { option in
                        let name = String(option.split(separator: "=").first ?? "")
                        return !replaced.contains(name) && name != "size"
                    }.map(String.init)
                    draft.values[key] = ([volid] + kept + changed.map { "\($0.0)=\($0.1)" }).joined(separator: ",")
                }
            }
            return .init()
        } catch {
            throw rpcError(error, "ControllerModifyVolume \(request.volumeID)")
        }
    }

    // MARK: - GetVolume

    /// The volume, where it is published, and whether Proxmox shows anything wrong with it.
    func getVolume(_ request: Csi_V1_ControllerGetVolumeRequest) async throws -> Csi_V1_ControllerGetVolumeResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        do {
            guard let (handle, storage, size) = try await volumes.existing(request.volumeID) else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
            let attachments = try await volumes.attachments(of: handle, storage: storage)
            let users = attachments.filter { !ProxmoxVolumes.isHolder($0.0) }
            let held = attachments.filter { ProxmoxVolumes.isHolder($0.0) }
            let condition: Csi_V1_VolumeCondition = .with {
                if users.count > 1 {
                    $0.abnormal = true
                    $0.message = "attached to \(users.count) VMs at once: " + users.map { "\($0.0.vmid) (\($0.1))" }.joined(separator: ", ")
                } else if !held.isEmpty {
                    $0.abnormal = true
                    $0.message = "still on holder VM \(held[0].0.vmid) from an interrupted operation; the next publish, expand or delete releases it"
                } else {
                    $0.message = users.isEmpty ? "not attached" : "attached to VM \(users[0].0.vmid) as \(users[0].1)"
                }
            }
            return .with {
                $0.volume.volumeID = handle.description
                $0.volume.capacityBytes = size
                $0.volume.accessibleTopology = [.with {
                    $0.segments = handle.node.map { [TopologyKey.region: handle.cluster, TopologyKey.zone: $0] }
                        ?? [TopologyKey.region: handle.cluster]
                }]
                $0.status.publishedNodeIds = users.map(\.0.name).sorted()
                $0.status.volumeCondition = condition
            }
        } catch {
            throw rpcError(error, "ControllerGetVolume \(request.volumeID)")
        }
    }

    // MARK: - Validate, list, capacity

    func validate(_ request: Csi_V1_ValidateVolumeCapabilitiesRequest) async throws -> Csi_V1_ValidateVolumeCapabilitiesResponse {
        guard !request.volumeID.isEmpty else { throw RPCError(.invalidArgument, "volume_id is required") }
        guard !request.volumeCapabilities.isEmpty else { throw RPCError(.invalidArgument, "volume_capabilities is required") }
        // A capability that lacks what every capability carries is a bad request;
        // one this driver cannot serve is answered below as not confirmed.
        for (index, capability) in request.volumeCapabilities.enumerated() {
            if let malformation = CapabilityCheck.malformation(of: capability) {
                throw RPCError(.invalidArgument, "volume_capabilities[\(index)]: \(malformation)")
            }
        }
        do {
            guard try await volumes.existing(request.volumeID) != nil else {
                throw RPCError(.notFound, "volume \(request.volumeID) does not exist")
            }
        } catch {
            throw rpcError(error, "ValidateVolumeCapabilities \(request.volumeID)")
        }
        if let problem = request.volumeCapabilities.lazy.compactMap(CapabilityCheck.problem(with:)).first {
            return .with { $0.message = problem }
        }
        return .with {
            $0.confirmed.volumeCapabilities = request.volumeCapabilities
            $0.confirmed.volumeContext = request.volumeContext
            $0.confirmed.parameters = request.parameters
            $0.confirmed.mutableParameters = request.mutableParameters
        }
    }

    func listVolumes(_ request: Csi_V1_ListVolumesRequest) async throws -> Csi_V1_ListVolumesResponse {
        let start = try Paging.start(request.startingToken, maxEntries: request.maxEntries, what: "ListVolumes")
        do {
            let entries = try await allVolumes()
            let page = try Paging.page(count: entries.count, start: start, maxEntries: request.maxEntries, what: "ListVolumes")
            return .with {
                $0.entries = Array(entries[page.range])
                $0.nextToken = page.next
            }
        } catch {
            throw rpcError(error, "ListVolumes")
        }
    }

    /// Every volume the driver owns, sorted by id, with the nodes it is published to.
    private func allVolumes() async throws -> [Csi_V1_ListVolumesResponse.Entry] {
        var entries: [Csi_V1_ListVolumesResponse.Entry] = []
        for cluster in config.clusters.map(\.name) {
            let client = try volumes.client(cluster)
            let resources = try await volumes.resources(cluster, fresh: true)
            var published: [String: [String]] = [:]
            for (vm, vmConfig) in try await volumes.scanConfigs(volumes.vms(cluster).filter { !ProxmoxVolumes.isCopyVM($0) }) {
                for (key, value) in vmConfig.values where ProxmoxVolumes.isDiskKey(key) && !key.hasPrefix("unused") {
                    published["\(vm.node)|\(ProxmoxVolumes.volid(of: value))", default: []].append(vm.name)
                }
            }
            var seenShared = Set<String>()
            for resource in resources where resource.type == "storage" && resource.content.contains("images") {
                guard let storage = resource.storage else { continue }
                if resource.shared, !seenShared.insert(storage).inserted { continue }
                for volume in try await client.volumes(node: resource.node, storage: storage, vmid: config.ownerVMID) {
                    let name = String(volume.volid.split(separator: ":", maxSplits: 1).last ?? "").split(separator: "/").last.map(String.init) ?? ""
                    let handle = VolumeHandle(cluster: cluster, node: resource.shared ? nil : resource.node, storage: storage, volume: name)
                    let nodes = resource.shared
                        ? published.filter { $0.key.hasSuffix("|\(volume.volid)") }.flatMap(\.value)
                        : published["\(resource.node)|\(volume.volid)"] ?? []
                    entries.append(.with {
                        $0.volume.volumeID = handle.description
                        $0.volume.capacityBytes = volume.size
                        $0.status.publishedNodeIds = nodes.sorted()
                    })
                }
            }
        }
        // Restored and cloned volumes, owned by their record VMs.
        for record in try await volumes.copyVMs(.volume) {
            guard let volid = record.volid, record.settled else { continue }
            let storageID = String(volid.split(separator: ":", maxSplits: 1).first ?? "")
            guard let storage = try await volumes.storage(record.vm.cluster, storageID) else { continue }
            let name = String(volid.split(separator: ":", maxSplits: 1).last?.split(separator: "/").last ?? "")
            let handle = VolumeHandle(cluster: record.vm.cluster, node: storage.shared ? nil : record.vm.node, storage: storageID, volume: name)
            let size = try await volumes.size(of: handle, storage: storage) ?? 0
            let users = try await volumes.attachments(of: handle, storage: storage).filter { !ProxmoxVolumes.isHolder($0.0) }
            entries.append(.with {
                $0.volume.volumeID = handle.description
                $0.volume.capacityBytes = size
                $0.status.publishedNodeIds = users.map(\.0.name).sorted()
            })
        }
        return entries.sorted { $0.volume.volumeID < $1.volume.volumeID }
    }

    func getCapacity(_ request: Csi_V1_GetCapacityRequest) async throws -> Csi_V1_GetCapacityResponse {
        for (index, capability) in request.volumeCapabilities.enumerated() {
            if let problem = CapabilityCheck.problem(with: capability) {
                throw RPCError(.invalidArgument, "volume_capabilities[\(index)]: \(problem)")
            }
        }
        let cluster = request.accessibleTopology.segments[TopologyKey.region] ?? config.clusters[0].name
        let zone = request.accessibleTopology.segments[TopologyKey.zone]
        do {
            // Without a storage, report the largest free space of any storage for disk images.
            let storages: [StorageRef]
            if request.parameters.isEmpty {
                let ids = Set(try await volumes.resources(cluster).filter { $0.type == "storage" && $0.content.contains("images") }.compactMap(\.storage))
                storages = try await ids.asyncCompactMap { try await volumes.storage(cluster, $0) }
            } else {
                let parameters = try VolumeParameters.parse(request.parameters, config: config, cluster: cluster)
                storages = try await volumes.storage(cluster, parameters.storage).map { [$0] } ?? []
            }
            let available = storages.flatMap { storage in
                storage.available.filter { zone == nil || $0.key == zone }.map(\.value)
            }.max() ?? 0
            return .with { $0.availableCapacity = available }
        } catch {
            throw rpcError(error, "GetCapacity")
        }
    }
}

extension Sequence {
    func asyncCompactMap<T>(_ transform: (Element) async throws -> T?) async rethrows -> [T] {
        var out: [T] = []
        for element in self {
            if let value = try await transform(element) { out.append(value) }
        }
        return out
    }
}
