@testable import CSIDriver
@testable import ProxmoxDomain
import ProxmoxAPI
import Testing

// Proxmox facts the controller and node share, each kept in one place (issue 13, item 4).
@Suite struct ProxmoxFactsTests {
    @Test(arguments: [
        ("ceph:vm-9999-csi-abc", "ceph", "vm-9999-csi-abc"),
        ("local:9999/vm-9999-csi-abc.raw", "local", "vm-9999-csi-abc.raw"),
        ("nfs:100/vm-100-disk-1.qcow2", "nfs", "vm-100-disk-1.qcow2"),
        ("local-lvm:vm-100-disk-0", "local-lvm", "vm-100-disk-0"),
        ("nocolon", "nocolon", ""),
    ])
    func volidsSplitIntoStorageAndName(volid: String, storage: String, name: String) {
        #expect(Volid.storage(of: volid) == storage)
        #expect(Volid.volumeName(of: volid) == name)
    }

    @Test(arguments: [(DiskBus.scsi, 31, "scsi0", "scsi30"), (DiskBus.virtio, 16, "virtio0", "virtio15")])
    func busesHaveQemuServersSlotCounts(bus: DiskBus, count: Int, first: String, last: String) {
        #expect(bus.slotCount == count && bus.slots.count == count)
        #expect(bus.slots.first == first && bus.slots.last == last)
    }

    @Test func sharedStorageIsServedByTheFirstNodeByNameAndLocalByItsOwn() {
        let shared = StorageRef(id: "ceph", type: "rbd", shared: true, available: ["pve2": 1, "pve1": 1, "pve3": 1])
        #expect(shared.node(for: VolumeHandle(cluster: "c", node: nil, storage: "ceph", volume: "v")) == "pve1")
        #expect(shared.node(for: VolumeHandle(cluster: "c", node: "pve3", storage: "ceph", volume: "v")) == "pve3")
        #expect(StorageRef(id: "x", type: "rbd", shared: true, available: [:]).anyNode == "")
    }

    @Test func topologyNamesTheNodeOnlyForLocalStorage() {
        #expect(VolumeHandle(cluster: "c", node: nil, storage: "ceph", volume: "v").topologySegments
            == [TopologyKey.region: "c"])
        #expect(VolumeHandle(cluster: "c", node: "pve1", storage: "local-lvm", volume: "v").topologySegments
            == [TopologyKey.region: "c", TopologyKey.zone: "pve1"])
    }

    @Test(arguments: [
        ("UPID:pve1:0000C0DE:0001A2B3:6500AB12:qmconfig:100:csi@pve!csi:", "pve1"),
        ("UPID:node-b:1:2:3:vzdump::root@pam:", "node-b"),
        ("garbage", ""),
    ])
    func aTaskIsAskedOfTheNodeItsUPIDNames(upid: String, node: String) {
        #expect(UPID.node(of: upid) == node)
    }

    @Test(arguments: [("ceph", true), ("local-lvm", true), ("a.b_c-1", true), ("Ceph", false), ("1ceph", false), ("ceph-", false), ("c", false)])
    func storageIDsFollowProxmoxsPattern(id: String, valid: Bool) {
        #expect(VolumeHandle.isStorageID(id) == valid)
    }

    @Test func aStorageClassOptionReplacesTheProfilesAndLeavesTheRest() {
        let profile = DiskOptions(bus: "virtio", cache: "none", iothread: true, iops: 5000)
        let merged = profile.overridden(by: DiskOptions(cache: "writeback", backup: false))
        #expect(merged == DiskOptions(bus: "virtio", cache: "writeback", iothread: true, backup: false, iops: 5000))
        #expect(profile.overridden(by: DiskOptions()) == profile)
    }
}
