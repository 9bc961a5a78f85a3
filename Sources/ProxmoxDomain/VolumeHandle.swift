import FoundationEssentials
import TextSupport

/// A CSI volume id: `<cluster>/<node-or-empty>/<storage>/<volume-name>`,
/// the form sergelogvinov/proxmox-csi-plugin uses, so PVs it created keep
/// working. The node is empty for shared storage (the volume is reachable
/// from every node of the cluster). The plugin names a file storage's volume
/// by its path inside the storage, `<vmid>/<file>` (or deeper,
/// `<vmid>/<folder>/<file>`: its pkg/utils/volume), so everything after the
/// storage is the volume, slashes and all.
public struct VolumeHandle: Sendable, Hashable, CustomStringConvertible {
    public var cluster: String
    /// The Proxmox node holding a local storage's volume; nil for shared storage.
    public var node: String?
    public var storage: String
    /// The volume's name in its storage (`vm-9999-pvc-…`, `vm-9999-pvc-….raw` for dir/nfs),
    /// or its path there as the plugin writes it (`9999/vm-9999-pvc-….raw`).
    public var volume: String

    public init(cluster: String, node: String?, storage: String, volume: String) {
        self.cluster = cluster
        self.node = node
        self.storage = storage
        self.volume = volume
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case malformed(String)
        public var description: String {
            switch self {
            case let .malformed(id): "volume id \"\(id)\" is not <cluster>/<node>/<storage>/<volume>"
            }
        }
    }

    public init(parsing id: String) throws(ParseError) {
        let parts = id.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 4, !parts[0].isEmpty, parts[2...].allSatisfy({ !$0.isEmpty }),
              Self.isStorageID(parts[2]), parts.allSatisfy({ !$0.contains(where: { $0.isWhitespace || $0 == ":" }) })
        else { throw .malformed(id) }
        self.init(cluster: parts[0], node: parts[1].isEmpty ? nil : parts[1], storage: parts[2],
                  volume: parts[3...].joined(separator: "/"))
    }

    public var description: String { "\(cluster)/\(node ?? "")/\(storage)/\(volume)" }

    /// The vmid that owns the volume, from its `vm-<vmid>-` name: the
    /// driver's owner vmid, or the record VM of a restored or cloned volume.
    public var ownerVMID: Int? {
        // A path inside a file storage starts with the owner's folder (pve-storage's images/<vmid>/).
        if let folder = volume.split(separator: "/").first, volume.contains("/") { return Int(folder) }
        guard volume.hasPrefix("vm-") else { return nil }
        return Int(volume.dropFirst(3).prefix { $0.isNumber })
    }

    /// The volume's own file or volume name, without a path's folders.
    public var fileName: String { String(volume.split(separator: "/").last ?? "") }

    /// The Proxmox volume id. dir and nfs volumes live in a folder per owner vmid.
    public func volid(ownerVMID fallback: Int, storageType: String) -> String {
        if volume.contains("/") { return "\(storage):\(volume)" }  // the path is given (the plugin's form)
        return ["dir", "nfs", "cifs", "glusterfs"].contains(storageType)
            ? "\(storage):\(ownerVMID ?? fallback)/\(volume)" : "\(storage):\(volume)"
    }

    /// pve-storage's storage id format (`[a-z][a-z0-9\-_.]*[a-z0-9]`), checked by hand on every volume id parsed.
    package static func isStorageID(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count >= 2, ASCII.isLower(bytes[0]), ASCII.isLowerOrDigit(bytes[bytes.count - 1]) else { return false }
        return bytes.dropFirst().dropLast().allSatisfy { ASCII.isLowerOrDigit($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") }
    }
}

/// How the driver names what it creates in Proxmox, deterministically, so a
/// retried CreateVolume finds the volume its first attempt made.
public enum VolumeNaming {
    /// The Proxmox volume name for a CSI volume name (`pvc-<uuid>` from
    /// csi-provisioner). Names Proxmox cannot take (uppercase, long, odd
    /// characters) become a hash of the name, still unique and stable.
    public static func volumeName(forCSIName name: String, ownerVMID: Int, storageType: String, format: String? = nil) -> String {
        // [a-z0-9][a-z0-9-]{0,62}
        let bytes = Array(name.utf8)
        let plain = (1...63).contains(bytes.count) && ASCII.isLowerOrDigit(bytes[0])
            && bytes.allSatisfy { ASCII.isLowerOrDigit($0) || $0 == UInt8(ascii: "-") }
        let base = "vm-\(ownerVMID)-" + (plain ? name : "csi-" + String(sha256Hex(name).prefix(32)))
        guard isFileStorage(storageType) else { return base }
        return base + "." + (format ?? "raw")
    }

    /// Storage types whose volumes are image files, named with their format's
    /// extension (pve-storage Plugin.pm parse_name_dir); the others hold raw volumes only.
    public static func isFileStorage(_ type: String) -> Bool {
        ["dir", "nfs", "cifs", "glusterfs"].contains(type)
    }

    /// The disk serial the guest sees (at most 20 bytes), derived from the
    /// volume itself (not its slot or node), so the node finds the right disk
    /// wherever and however it is attached.
    public static func serial(for handle: VolumeHandle) -> String {
        "csi-" + String(sha256Hex(identity(handle)).prefix(16))
    }

    /// A SCSI WWN (NAA 5, `0x` + 16 hex digits) from the same identity.
    public static func wwn(for handle: VolumeHandle) -> String {
        "0x5" + String(sha256Hex("wwn:" + identity(handle)).prefix(15))
    }

    /// Node-independent, so a volume moved between nodes keeps its serial; by
    /// file name, so the plugin's path form of an id names the same disk.
    private static func identity(_ handle: VolumeHandle) -> String {
        "\(handle.cluster)/\(handle.storage)/\(handle.fileName)"
    }
}

/// SHA-256 as lowercase hex (FIPS 180-4); small enough to keep here rather
/// than add a crypto dependency for naming.
package func sha256Hex(_ text: String) -> String {
    var hash: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
    let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]
    var message = Array(text.utf8)
    let bitLength = UInt64(message.count) * 8
    message.append(0x80)
    while message.count % 64 != 56 { message.append(0) }
    for shift in stride(from: 56, through: 0, by: -8) { message.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }
    func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
    for chunk in stride(from: 0, to: message.count, by: 64) {
        var w = [UInt32](repeating: 0, count: 64)
        for i in 0..<16 {
            w[i] = UInt32(message[chunk + 4 * i]) << 24 | UInt32(message[chunk + 4 * i + 1]) << 16
                | UInt32(message[chunk + 4 * i + 2]) << 8 | UInt32(message[chunk + 4 * i + 3])
        }
        for i in 16..<64 {
            let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
            let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
            w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
        }
        var (a, b, c, d, e, f, g, h) = (hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7])
        for i in 0..<64 {
            let t1 = h &+ (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) &+ ((e & f) ^ (~e & g)) &+ k[i] &+ w[i]
            let t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) &+ ((a & b) ^ (a & c) ^ (b & c))
            (h, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
        }
        for (index, value) in [a, b, c, d, e, f, g, h].enumerated() { hash[index] = hash[index] &+ value }
    }
    return hash.map { value in
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 8 - hex.count) + hex
    }.joined()
}
