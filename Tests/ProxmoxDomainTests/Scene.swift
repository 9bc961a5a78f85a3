import FakeProxmox
import ProxmoxAPI
@testable import ProxmoxDomain

/// One cluster "main" of nodes pve1 and pve2, with a local lvmthin storage,
/// a shared rbd storage and a dir storage, the node VMs worker-1 (100, pve1)
/// and worker-2 (101, pve2), and the domain on top of it.
struct Scene {
    static let owner = 9999
    let fake = FakeCluster()
    let volumes: ProxmoxVolumes

    init(cacheSeconds: Double = 0, scanSeconds: Double? = nil) {
        fake.addStorage("local-lvm", type: "lvmthin")
        fake.addStorage("ceph", type: "rbd", shared: true)
        fake.addStorage("local", type: "dir")
        fake.addVM(100, node: "pve1", name: "worker-1", config: ["scsi0": "local-lvm:vm-100-disk-0,size=32G", "scsihw": "virtio-scsi-pci"])
        fake.addVM(101, node: "pve2", name: "worker-2", config: ["scsi0": "local-lvm:vm-101-disk-0,size=32G"])
        volumes = ProxmoxVolumes(clusters: [("main", fake)], ownerVMID: Self.owner, taskTimeout: 60, cacheSeconds: cacheSeconds,
                                 scanSeconds: scanSeconds ?? cacheSeconds)
    }

    /// A volume of the driver's on `storage` (local to pve1 unless shared).
    @discardableResult
    func volume(_ name: String, storage: String = "local-lvm", node: String? = "pve1", size: Int64 = 1 << 30) -> VolumeHandle {
        let handle = VolumeHandle(cluster: "main", node: node, storage: storage, volume: "vm-\(Self.owner)-\(name)")
        fake.addVolume("\(storage):\(handle.volume)", node: node, owner: Self.owner, size: size)
        return handle
    }

    func vm(_ vmid: Int) -> VMRef {
        let found = fake.vm(vmid)!
        return VMRef(cluster: "main", node: found.node, vmid: vmid, name: found.values["name"] ?? "")
    }

    /// Attaches `volid` to VM `vmid` the way ControllerPublish does.
    /// Attaches `volid`, which is made first when the fake has no such volume (Proxmox refuses a disk whose volume is not there).
    func attach(_ volid: String, to vmid: Int, bus: DiskBus = .scsi, readonly: Bool = false) async throws -> String {
        if fake.volume(volid) == nil {
            let owner = volid.split(separator: "-").dropFirst().first.flatMap { Int($0) } ?? 9999
            fake.addVolume(volid, node: volid.hasPrefix("local") ? vm(vmid).node : nil, owner: owner)
        }
        return try await volumes.attach(volid, as: volid + (readonly ? ",ro=1" : ""), readonly: readonly, bus: bus, to: vm(vmid)).slot
    }

    /// The VM's disk slots of a bus that hold something, current or pending.
    func slots(_ vmid: Int, _ bus: DiskBus) -> [String] {
        let vm = fake.vm(vmid)!
        return bus.slots.filter { vm.values[$0] != nil || vm.pending[$0] != nil }
    }

    /// Fills the VM's slots of a bus with other disks, but for `free`.
    func fill(_ vmid: Int, _ bus: DiskBus, except free: Set<String> = []) {
        fake.state.withLock { state in
            for slot in bus.slots where state.vms[vmid]!.values[slot] == nil && !free.contains(slot) {
                state.vms[vmid]!.values[slot] = "local-lvm:vm-\(vmid)-other-\(slot)"
            }
        }
    }
}

extension DomainError {
    var kind: String {
        switch self {
        case .notFound: "notFound"
        case .conflict: "conflict"
        case .busy: "busy"
        case .notYet: "notYet"
        case .exists: "exists"
        case .exhausted: "exhausted"
        case .inconsistent: "inconsistent"
        }
    }
}

/// The DomainError kind `body` throws, or nil when it does not throw one.
func domainErrorKind(_ body: () async throws -> some Any) async -> String? {
    do {
        _ = try await body()
        return nil
    } catch let error as DomainError {
        return error.kind
    } catch {
        return "other: \(error)"
    }
}
