import FoundationEssentials
import TextSupport
import ProxmoxDomain
import Synchronization
import UnaryGRPC

/// The disk identity each volume was staged with. NodeStage and
/// NodePublish carry the publish context (what the controller put on the
/// disk); unstage, unpublish, stats and expand do not, and a volume whose
/// identity is not the one its id derives (a serial or WWN another driver
/// set: proxmox-csi-plugin's slot WWN, no serial) must still be recognised
/// as the volume's own, or it is never unmounted. Kept as one small file per
/// volume under the plugin's directory in kubelet's, so a restarted node
/// plugin still knows.
final class NodeIdentities: Sendable {
    struct Identity: Codable, Sendable, Equatable {
        var volumeID: String
        var serial: String
        var wwn: String?
        /// Staged through a LUKS mapping: its raw disk must never be handed to a pod.
        var encrypted: Bool?
    }

    /// nil: kept in memory only (tests, and nodes without a state directory).
    let directory: String?
    private let known = Mutex<[String: Identity]>([:])

    init(directory: String?) {
        self.directory = directory
    }

    /// Written through on every stage (one small file): memory holds only
    /// what the file holds, so a failed write is failed again on the retry.
    func record(_ identity: Identity) throws(RPCError) {
        if let directory {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                let data = try JSONEncoder().encode(identity)
                try AtomicFile.replace(path(of: identity.volumeID, in: directory), with: Array(data))
            } catch {
                throw RPCError(.internal, "cannot record the disk identity of volume \(identity.volumeID) in \(directory): \(error)")
            }
        }
        known.withLock { $0[identity.volumeID] = identity }
    }

    /// What this process recorded, else what the file says (a plugin that restarted); the
    /// file is not cached, so a forget racing this read cannot bring an identity back.
    func identity(of volumeID: String) -> Identity? {
        if let identity = known.withLock({ $0[volumeID] }) { return identity }
        guard let directory,
              let data = FileManager.default.contents(atPath: path(of: volumeID, in: directory)),
              let identity = try? JSONDecoder().decode(Identity.self, from: data), identity.volumeID == volumeID else { return nil }
        return identity
    }

    func forget(_ volumeID: String) {
        known.withLock { _ = $0.removeValue(forKey: volumeID) }
        if let directory { try? FileManager.default.removeItem(atPath: path(of: volumeID, in: directory)) }
    }

    private func path(of volumeID: String, in directory: String) -> String {
        directory + "/" + String(sha256Hex(volumeID).prefix(32)) + ".json"
    }
}
