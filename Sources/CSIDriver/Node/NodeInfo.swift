import BlockDevice
import CSIProto
import FoundationEssentials
import Logging
import ProxmoxAPI
import ProxmoxDomain
import UnaryGRPC

/// What SMBIOS says about this VM: Proxmox sets it from the VM's `smbios1`.
struct SMBIOSIdentity: Sendable, Equatable {
    var uuid: String?
    var serial: String?

    /// `<sys>/class/dmi/id/product_uuid` and `product_serial` (root-only files).
    static func read(sysRoot: String) -> SMBIOSIdentity {
        func value(_ name: String) -> String? {
            KernelFile.value(sysRoot + "/class/dmi/id/" + name).flatMap { $0.isEmpty ? nil : $0 }
        }
        return SMBIOSIdentity(uuid: value("product_uuid")?.lowercased(), serial: value("product_serial"))
    }

    /// From a VM's `smbios1` value: `uuid=…,serial=…[,base64=1]`.
    init(smbios1: String) {
        let fields = Dictionary(smbios1.split(separator: ",").compactMap { part -> (String, String)? in
            let pair = part.split(separator: "=", maxSplits: 1).map(String.init)
            return pair.count == 2 ? (pair[0], pair[1]) : nil
        }, uniquingKeysWith: { _, last in last })
        uuid = fields["uuid"]?.lowercased()
        serial = fields["serial"].map { text in
            fields["base64"] == "1" ? Data(base64Encoded: text).map { String(decoding: $0, as: UTF8.self) } ?? text : text
        }
    }

    init(uuid: String?, serial: String?) {
        self.uuid = uuid
        self.serial = serial
    }

    /// Whether a VM with `other` is this one: the UUID decides when both have one.
    func matches(_ other: SMBIOSIdentity) -> Bool {
        if let uuid, let theirs = other.uuid { return uuid == theirs }
        if let serial, let theirs = other.serial { return serial == theirs }
        return false
    }
}

extension NodeService {
    /// virtio-scsi has 31 slots (scsi0–scsi30), the bus volumes attach to by default.
    static let scsiSlots = Int64(DiskBus.scsi.slotCount)

    /// The node id the controller resolves to this VM, its topology (region =
    /// cluster, zone = Proxmox node) and how many volumes fit on its SCSI bus.
    /// With a config, the VM is found through Proxmox by its SMBIOS identity;
    /// without one, topology comes from --region/--zone.
    func getInfo(logger: Logger? = nil) async throws -> Csi_V1_NodeGetInfoResponse {
        var response = Csi_V1_NodeGetInfoResponse.with {
            $0.nodeID = settings.nodeName
            // Without the VM's config, assume its own disk takes one slot.
            $0.maxVolumesPerNode = Self.scsiSlots - 1
        }
        var segments: [String: String] = [:]
        if let region = settings.region { segments[TopologyKey.region] = region }
        if let zone = settings.zone { segments[TopologyKey.zone] = zone }
        if let volumes {
            let identity = SMBIOSIdentity.read(sysRoot: settings.sysRoot)
            let found: (vm: VMRef, config: VMConfig)?
            do {
                found = try await thisVM(volumes, identity: identity)
            } catch {
                throw rpcError(error, "NodeGetInfo: finding the VM of node \(settings.nodeName)")
            }
            if let (vm, config) = found {
                segments = [TopologyKey.region: vm.cluster, TopologyKey.zone: vm.node]
                // The controller resolves a VM by name; a VM named otherwise is named by cluster and vmid.
                if vm.name != settings.nodeName { response.nodeID = "\(vm.cluster)/\(vm.vmid)" }
                response.maxVolumesPerNode = Self.scsiSlots - Int64(Self.slotsTakenByOwnDisks(config, vmid: vm.vmid))
            }
        }
        if !segments.isEmpty { response.accessibleTopology = .with { $0.segments = segments } }
        if let kubernetes = settings.kubernetes {
            // A limit the platform team set per node (or node pool); unreadable labels leave the slot count.
            do {
                let labels = try await kubernetes.labels(ofNode: settings.nodeName)
                let (limit, problem) = MaxVolumeAttachmentsLabel.limit(in: labels, driverName: settings.driverName,
                                                                       slots: response.maxVolumesPerNode)
                if let limit { response.maxVolumesPerNode = limit }
                if let problem { logger?.warning("NodeGetInfo: \(problem)") }
            } catch {
                logger?.warning("NodeGetInfo: cannot read node \(settings.nodeName)'s labels, so no max-volume-attachments label applies: \(error)")
            }
        }
        return response
    }

    /// The VM named like this node when its SMBIOS identity agrees (or none can
    /// be read), else the VM whose `smbios1` matches, searched in every cluster.
    func thisVM(_ volumes: ProxmoxVolumes, identity: SMBIOSIdentity) async throws -> (VMRef, VMConfig)? {
        func config(of vm: VMRef) async throws -> VMConfig {
            try await volumes.client(vm.cluster).vmConfig(node: vm.node, vmid: vm.vmid)
        }
        let named = try await volumes.vm(forNodeID: settings.nodeName)
        if let named {
            let namedConfig = try await config(of: named)
            let known = identity.uuid != nil || identity.serial != nil
            if !known || identity.matches(SMBIOSIdentity(smbios1: namedConfig["smbios1"] ?? "")) { return (named, namedConfig) }
        }
        guard identity.uuid != nil || identity.serial != nil else { return nil }
        for cluster in volumes.clusterNames {
            for vm in try await volumes.vms(cluster) where vm != named {
                let candidate = try await config(of: vm)
                if identity.matches(SMBIOSIdentity(smbios1: candidate["smbios1"] ?? "")) { return (vm, candidate) }
            }
        }
        return nil
    }

    /// SCSI slots holding the VM's own disks (anything not owned by another
    /// vmid: its system disk, a CD-ROM); the rest are for volumes.
    static func slotsTakenByOwnDisks(_ config: VMConfig, vmid: Int) -> Int {
        DiskBus.scsi.slots.filter { slot in
            guard let value = config[slot] else { return false }
            let volid = ProxmoxVolumes.volid(of: value)
            let name = Volid.volumeName(of: volid)
            guard name.hasPrefix("vm-"), let owner = Int(name.dropFirst(3).prefix { $0.isNumber }) else { return true }
            return owner == vmid
        }.count
    }
}
