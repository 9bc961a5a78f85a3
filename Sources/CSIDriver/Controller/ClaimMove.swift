import Foundation
import ProxmoxAPI
import ProxmoxDomain
import UnaryGRPC

/// Makes Kubernetes follow a moved volume. A PV's volume handle and node
/// affinity cannot change, so its claim is bound anew: a new PV (named after
/// the old one and the new volume id) with the new handle and the target's
/// zone, pre-bound to the claim; the claim deleted and made again with the
/// same name and spec, bound to the new PV; the old PV, set to Retain first
/// so no DeleteVolume comes for it, deleted last. The claim's spec rides on
/// the new PV (annotation `proxmox-csi.move/claim`) from before it is deleted
/// until it is made again, so a rerun after a crash between the two still has it.
public struct ClaimMove: Sendable {
    public let api: KubernetesAPI
    public let namespace: String
    public let claim: String
    public let driverName: String

    static let claimAnnotation = "proxmox-csi.move/claim"
    static let fromAnnotation = "proxmox-csi.move/from"
    static let policyAnnotation = "proxmox-csi.move/reclaim-policy"
    /// The volume id the moved PV's volume was copied from: deleted once the claim is bound anew.
    public static let fromVolumeAnnotation = "proxmox-csi.move/from-volume"
    static let zoneKey = "topology.kubernetes.io/zone"
    /// Set by the PV controller and the scheduler for the old binding: a new claim must not carry them.
    static let bindingAnnotations = ["pv.kubernetes.io/bind-completed", "pv.kubernetes.io/bound-by-controller",
                                     "volume.kubernetes.io/selected-node"]

    public init(api: KubernetesAPI, namespace: String, claim: String, driverName: String) {
        (self.api, self.namespace, self.claim, self.driverName) = (api, namespace, claim, driverName)
    }

    var claimPath: String { "/api/v1/namespaces/\(KubernetesAPI.segment(namespace))/persistentvolumeclaims/\(KubernetesAPI.segment(claim))" }
    var claimsPath: String { "/api/v1/namespaces/\(KubernetesAPI.segment(namespace))/persistentvolumeclaims" }
    static func volumePath(_ name: String) -> String { "/api/v1/persistentvolumes/" + KubernetesAPI.segment(name) }

    /// Where the claim stands.
    public enum Stage: Sendable, Equatable {
        /// Bound to the volume's PV (`volumeID` its handle): nothing done here yet.
        case bound(volume: String, volumeID: String)
        /// Deleted after the new PV was made; made again from what that PV carries.
        case gone(newVolume: String)
        /// Bound to the moved volume's PV; the old PV (if still there) is deleted last.
        case moved(newVolume: String, oldVolume: String?)
    }

    /// The volume id a moved PV's volume came from (its annotation).
    public func originalVolumeID(of newVolume: String) async throws -> String? {
        try await api.expect("GET", Self.volumePath(newVolume))["metadata"]["annotations"][Self.fromVolumeAnnotation].string
    }

    public func stage() async throws -> Stage {
        let response = try await api.call("GET", claimPath)
        if response.status == 404 {
            let all = try await api.expect("GET", "/api/v1/persistentvolumes")
            let carrier = all["items"].array?.first { pv in
                pv["metadata"]["annotations"][Self.claimAnnotation].string.flatMap { try? JSONValue.parse(Array($0.utf8)) }
                    .map { $0["metadata"]["namespace"].string == namespace && $0["metadata"]["name"].string == claim } == true
            }
            guard let name = carrier?["metadata"]["name"].string else {
                throw RPCError(.notFound, "PersistentVolumeClaim \(namespace)/\(claim) does not exist")
            }
            return .gone(newVolume: name)
        }
        guard response.status == 200 else { throw KubernetesAPI.Failure(description: "GET \(claimPath): HTTP \(response.status)") }
        guard let volume = response.body["spec"]["volumeName"].string, !volume.isEmpty else {
            throw RPCError(.failedPrecondition, "PersistentVolumeClaim \(namespace)/\(claim) is not bound to a volume")
        }
        let pv = try await api.expect("GET", Self.volumePath(volume))
        if let from = pv["metadata"]["annotations"][Self.fromAnnotation].string {
            let old = try await api.call("GET", Self.volumePath(from))
            return .moved(newVolume: volume, oldVolume: old.status == 404 ? nil : from)
        }
        guard pv["spec"]["csi"]["driver"].string == driverName, let handle = pv["spec"]["csi"]["volumeHandle"].string else {
            throw RPCError(.failedPrecondition, "PersistentVolume \(volume) of claim \(namespace)/\(claim) is not a \(driverName) volume")
        }
        return .bound(volume: volume, volumeID: handle)
    }

    /// Who still uses the claim: running pods of its namespace, and nodes the
    /// volume is attached to. A volume moves only once both are empty.
    public func users(volume: String) async throws -> [String] {
        let pods = try await api.expect("GET", "/api/v1/namespaces/\(KubernetesAPI.segment(namespace))/pods")
        let using = (pods["items"].array ?? []).filter { pod in
            let phase = pod["status"]["phase"].string ?? ""
            return !["Succeeded", "Failed"].contains(phase)
                && (pod["spec"]["volumes"].array ?? []).contains { $0["persistentVolumeClaim"]["claimName"].string == claim }
        }.map { "pod \(namespace)/\($0["metadata"]["name"].string ?? "?") on node \($0["spec"]["nodeName"].string ?? "none")" }
        let attachments = try await api.expect("GET", "/apis/storage.k8s.io/v1/volumeattachments")
        let attached = (attachments["items"].array ?? []).filter { $0["spec"]["source"]["persistentVolumeName"].string == volume }
            .map { "VolumeAttachment \($0["metadata"]["name"].string ?? "?") to node \($0["spec"]["nodeName"].string ?? "?")" }
        return using + attached
    }

    /// The new PV's name: the old one's (less an earlier move's suffix) and the new volume id's hash.
    static func movedName(_ old: String, newID: String) -> String {
        let base = old.replacingOccurrences(of: "-m[0-9a-f]{8}$", with: "", options: .regularExpression)
        return base + "-m" + String(sha256Hex(newID).prefix(8))
    }

    /// Every change of the Kubernetes side, in order, for a dry run.
    public func plan(volume: String, newID: String, zone: String) -> [String] {
        let newName = Self.movedName(volume, newID: newID)
        return [
            "patch PersistentVolume \(volume): persistentVolumeReclaimPolicy Retain (its volume is not deleted with it)",
            "create PersistentVolume \(newName): volumeHandle \(newID), node affinity \(Self.zoneKey) in [\(zone)], "
                + "pre-bound to claim \(namespace)/\(claim)",
            "delete PersistentVolumeClaim \(namespace)/\(claim) and wait until it is gone",
            "create PersistentVolumeClaim \(namespace)/\(claim) with the same spec, volumeName \(newName)",
            "delete PersistentVolume \(volume)",
        ]
    }

    /// Runs the Kubernetes side from wherever it stands; returns the new PV's name.
    public func run(newID: String, zone: String, progress: @Sendable (String) -> Void) async throws -> String {
        while true {
            switch try await stage() {
            case let .bound(volume, handle):
                guard handle != newID else { throw RPCError(.internal, "PersistentVolume \(volume) already names \(newID)") }
                let pv = try await api.expect("GET", Self.volumePath(volume))
                let pvc = try await api.expect("GET", claimPath)
                let newName = Self.movedName(volume, newID: newID)
                progress("kubernetes: PersistentVolume \(volume) to Retain, then \(newName) for \(newID)")
                try await retain(pv)
                try await create(newPersistentVolume(from: pv, name: newName, newID: newID, zone: zone, claim: pvc))
                progress("kubernetes: claim \(namespace)/\(claim) deleted, to be bound to \(newName)")
                _ = try await api.expect("DELETE", claimPath, accepting: [200, 202, 404])
                try await waitUntilGone(claimPath)
            case let .gone(newVolume):
                let pv = try await api.expect("GET", Self.volumePath(newVolume))
                guard let text = pv["metadata"]["annotations"][Self.claimAnnotation].string,
                      let saved = try? JSONValue.parse(Array(text.utf8)) else {
                    throw RPCError(.internal, "PersistentVolume \(newVolume) carries no claim to make again")
                }
                progress("kubernetes: claim \(namespace)/\(claim) made again, bound to \(newVolume)")
                let made = try await api.call("POST", claimsPath, body: saved.setting(["spec", "volumeName"], to: .string(newVolume)))
                guard [200, 201, 409].contains(made.status) else {
                    throw KubernetesAPI.Failure(description: "POST \(claimsPath): \(made.body["message"].string ?? "HTTP \(made.status)")")
                }
            case let .moved(newVolume, oldVolume):
                guard let oldVolume else { return newVolume }
                progress("kubernetes: PersistentVolume \(oldVolume) deleted (Retain: its volume stays until the move deletes it)")
                _ = try await api.expect("DELETE", Self.volumePath(oldVolume), accepting: [200, 202, 404])
                try await waitUntilGone(Self.volumePath(oldVolume))
            }
        }
    }

    private func retain(_ pv: JSONValue) async throws {
        guard let name = pv["metadata"]["name"].string, pv["spec"]["persistentVolumeReclaimPolicy"].string != "Retain" else { return }
        let policy = pv["spec"]["persistentVolumeReclaimPolicy"].string ?? "Delete"
        let patch = JSONValue.object([:]).setting(["spec", "persistentVolumeReclaimPolicy"], to: .string("Retain"))
            .setting(["metadata", "annotations", Self.policyAnnotation], to: .string(policy))
        _ = try await api.expect("PATCH", Self.volumePath(name), body: patch, contentType: "application/merge-patch+json")
    }

    private func create(_ pv: JSONValue) async throws {
        let response = try await api.call("POST", "/api/v1/persistentvolumes", body: pv)
        guard [200, 201, 409].contains(response.status) else {
            throw KubernetesAPI.Failure(description: "POST /api/v1/persistentvolumes: \(response.body["message"].string ?? "HTTP \(response.status)")")
        }
    }

    /// The old PV's spec with the new handle, the target's zone and a claimRef
    /// naming the claim (no uid: the claim made again binds to it).
    func newPersistentVolume(from pv: JSONValue, name: String, newID: String, zone: String, claim pvc: JSONValue) -> JSONValue {
        var annotations = pv["metadata"]["annotations"].object ?? [:]
        let policy = annotations.removeValue(forKey: Self.policyAnnotation)?.string ?? pv["spec"]["persistentVolumeReclaimPolicy"].string ?? "Delete"
        annotations[Self.fromAnnotation] = .string(pv["metadata"]["name"].string ?? "")
        annotations[Self.fromVolumeAnnotation] = .string(pv["spec"]["csi"]["volumeHandle"].string ?? "")
        annotations[Self.claimAnnotation] = .string(String(decoding: savedClaim(pvc).serialized(), as: UTF8.self))
        var spec = pv["spec"]
        spec = spec.setting(["csi", "volumeHandle"], to: .string(newID))
            .setting(["persistentVolumeReclaimPolicy"], to: .string(policy))
            .setting(["claimRef"], to: .object(["apiVersion": .string("v1"), "kind": .string("PersistentVolumeClaim"),
                                                "namespace": .string(namespace), "name": .string(claim)]))
        if let terms = spec["nodeAffinity"]["required"]["nodeSelectorTerms"].array {
            let moved = terms.map { term in
                JSONValue.object(["matchExpressions": .array((term["matchExpressions"].array ?? []).map { expression in
                    expression["key"].string == Self.zoneKey ? expression.setting(["values"], to: .array([.string(zone)])) : expression
                })])
            }
            spec = spec.setting(["nodeAffinity", "required", "nodeSelectorTerms"], to: .array(moved))
        }
        return .object([
            "apiVersion": .string("v1"), "kind": .string("PersistentVolume"),
            "metadata": .object(["name": .string(name), "labels": pv["metadata"]["labels"], "annotations": .object(annotations)]),
            "spec": spec,
        ])
    }

    /// What the claim is made again from: its name, labels, annotations (less
    /// the old binding's) and spec, asking for what the old volume held.
    func savedClaim(_ pvc: JSONValue) -> JSONValue {
        var annotations = pvc["metadata"]["annotations"].object ?? [:]
        for key in Self.bindingAnnotations { annotations[key] = nil }
        var spec = pvc["spec"]
        if let capacity = pvc["status"]["capacity"]["storage"].string {
            spec = spec.setting(["resources", "requests", "storage"], to: .string(capacity))
        }
        return .object([
            "apiVersion": .string("v1"), "kind": .string("PersistentVolumeClaim"),
            "metadata": .object(["name": .string(claim), "namespace": .string(namespace), "labels": pvc["metadata"]["labels"],
                                 "annotations": .object(annotations)]),
            "spec": spec,
        ])
    }

    private func waitUntilGone(_ path: String) async throws {
        for _ in 0..<150 {
            if try await api.call("GET", path).status == 404 { return }
            try await Task.sleep(for: .seconds(2))
        }
        throw RPCError(.deadlineExceeded, "\(path) is still there after 300 s (a finalizer waits: is a pod still using it?)")
    }
}
