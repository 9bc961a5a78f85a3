@testable import ProxmoxDomain
import Testing

/// The hand-written name checks (a regex literal is parsed again on every
/// call, and these run for every config key and volume id) against the
/// patterns they stand for, on names of every shape near the edges.
@Suite struct NameFormatTests {
    /// Strings built from the characters that matter, up to `length`, plus edge cases.
    static func samples(_ alphabet: [String], length: Int, extra: [String]) -> [String] {
        var out = [""], layer = [""]
        for _ in 0..<length {
            layer = layer.flatMap { prefix in alphabet.map { prefix + $0 } }
            out += layer
        }
        return out + extra
    }

    @Test func diskKeys() {
        let names = Self.samples(["scsi", "ide", "unused", "0", "7", "x", "virtio", "sata"], length: 3,
                                 extra: ["scsi30", "virtio15", "efidisk0", "tpmstate0", "net0", "scsi", "scsi-1", "scsi1a", "SCSI1", "scsi١"])
        for name in names {
            #expect(ProxmoxVolumes.isDiskKey(name) == (name.wholeMatch(of: /(scsi|virtio|sata|ide|unused)[0-9]+/) != nil), "\(name)")
        }
        #expect(ProxmoxVolumes.isDiskKey("scsi30") && ProxmoxVolumes.isDiskKey("unused0") && !ProxmoxVolumes.isDiskKey("efidisk0"))
    }

    @Test func storageIDs() {
        let names = Self.samples(["a", "z", "0", "-", "_", ".", "A", "/"], length: 4,
                                 extra: ["local-lvm", "ceph", "nfs.backup", "a", "1abc", "abc-", "abc_", "ab c", "é1"])
        for name in names {
            #expect(VolumeHandle.isStorageID(name) == (name.wholeMatch(of: /[a-z][a-z0-9\-_.]*[a-z0-9]/) != nil), "\(name)")
        }
    }

    @Test func plainVolumeNames() {
        let names = Self.samples(["a", "9", "-", "A", "_"], length: 4, extra: [
            "pvc-" + String(repeating: "a", count: 59), "pvc-" + String(repeating: "a", count: 60), "pvc-0b6a5bd2-55c4-4a8b-a1a1-2f7c1f0e6b21",
        ])
        for name in names {
            let plain = name.wholeMatch(of: /[a-z0-9][a-z0-9-]{0,62}/) != nil
            let made = VolumeNaming.volumeName(forCSIName: name, ownerVMID: 9999, storageType: "rbd")
            #expect((made == "vm-9999-\(name)") == plain, "\(name) → \(made)")
        }
    }

    @Test func snapnames() {
        let hex32 = "0123456789abcdef0123456789abcdef"
        let names = ["csi" + hex32, "csi" + hex32.dropLast(), "csi" + hex32 + "0", "csi" + hex32.uppercased(), "csx" + hex32,
                     "csi" + hex32.dropLast() + "g", "csi", "", NativeSnapshot.snapname(csiName: "snap-1")]
        for name in names {
            #expect(NativeSnapshot.isSnapname(name) == (name.wholeMatch(of: /csi[0-9a-f]{32}/) != nil), "\(name)")
        }
        #expect(NativeSnapshot.isSnapname(NativeSnapshot.snapname(csiName: "snap-1")))
    }
}
