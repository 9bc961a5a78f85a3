import FoundationEssentials
import ProxmoxAPI
import ProxmoxDomain
import UnaryGRPC

/// Makes Kubernetes follow a moved volume. A PV's volume handle and node
/// affinity cannot change, so its claim is bound anew, in an order that keeps
/// the volume unused while it is copied:
/// 1. park: the old PV is set to Retain (no DeleteVolume comes for it) and
///    carries the claim's spec and the target node; the claim is deleted, so
///    no pod can use the volume any more (a pod needs its claim);
/// 2. (the Proxmox move);
/// 3. rebind: a new PV (named after the old one and the new volume id) with
///    the new handle and the target's zone, pre-bound to the claim and carrying
///    it too; the claim made again with its name and spec, bound to the new PV;
///    the old PV deleted;
/// 4. (the original volume deleted) and the move's annotations removed.
/// Every stage is read back from the objects, so a rerun goes on from any crash.
public struct ClaimMove: Sendable {
    public let api: KubernetesAPI
    public let namespace: String
    public let claim: String
    public let driverName: String

    static let claimAnnotation = "proxmox-csi.move/claim"
    static let fromAnnotation = "proxmox-csi.move/from"
    static let targetAnnotation = "proxmox-csi.move/to-node"
    static let policyAnnotation = "proxmox-csi.move/reclaim-policy"
    static let fromVolumeAnnotation = "proxmox-csi.move/from-volume"
    static let moveAnnotations = [claimAnnotation, fromAnnotation, targetAnnotation, policyAnnotation, fromVolumeAnnotation]
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
        /// Deleted; its spec rides on the old PV until the volume has moved to `target`.
        case parked(volume: String, volumeID: String, target: String)
        /// Deleted, and the new PV made: the claim is made again from what that PV carries.
        case gone(newVolume: String, originalID: String, target: String)
        /// Bound to the moved volume's PV; the old PV (if still there), the original volume and
        /// the move's annotations go last.
        case moved(newVolume: String, oldVolume: String?, originalID: String, target: String)
    }

    public func stage() async throws -> Stage {
        let response = try await api.call("GET", claimPath)
        if response.status == 404 {
            let all = try await api.expect("GET", "/api/v1/persistentvolumes")
            let carriers = (all["items"].array ?? []).filter { pv in
                pv["metadata"]["annotations"][Self.claimAnnotation].string.flatMap { try? JSONValue.parse(Array($0.utf8)) }
                    .map { $0["metadata"]["namespace"].string == namespace && $0["metadata"]["name"].string == claim } == true
            }
            // The new PV, once made, is the one to go on from.
            if let new = carriers.first(where: { $0["metadata"]["annotations"][Self.fromAnnotation].string != nil }),
               let name = new["metadata"]["name"].string,
               let original = new["metadata"]["annotations"][Self.fromVolumeAnnotation].string,
               let target = new["metadata"]["annotations"][Self.targetAnnotation].string {
                return .gone(newVolume: name, originalID: original, target: target)
            }
            guard let old = carriers.first, let name = old["metadata"]["name"].string,
                  let handle = old["spec"]["csi"]["volumeHandle"].string,
                  let target = old["metadata"]["annotations"][Self.targetAnnotation].string else {
                throw RPCError(.notFound, "PersistentVolumeClaim \(namespace)/\(claim) does not exist")
            }
            return .parked(volume: name, volumeID: handle, target: target)
        }
        guard response.status == 200 else { throw KubernetesAPI.Failure(description: "GET \(claimPath): HTTP \(response.status)") }
        guard let volume = response.body["spec"]["volumeName"].string, !volume.isEmpty else {
            throw RPCError(.failedPrecondition, "PersistentVolumeClaim \(namespace)/\(claim) is not bound to a volume")
        }
        let pv = try await api.expect("GET", Self.volumePath(volume))
        let annotations = pv["metadata"]["annotations"]
        if let from = annotations[Self.fromAnnotation].string, let original = annotations[Self.fromVolumeAnnotation].string,
           let target = annotations[Self.targetAnnotation].string {
            let old = try await api.call("GET", Self.volumePath(from))
            return .moved(newVolume: volume, oldVolume: old.status == 404 ? nil : from, originalID: original, target: target)
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
        let base = old.replacing(/-m[0-9a-f]{8}$/, with: "")
        return base + "-m" + String(sha256Hex(newID).prefix(8))
    }

    /// Every change of the Kubernetes side before and after the Proxmox move, for a dry run.
    public func plan(volume: String, newID: String, zone: String) -> (before: [String], after: [String]) {
        let newName = Self.movedName(volume, newID: newID)
        return ([
            "patch PersistentVolume \(volume): persistentVolumeReclaimPolicy Retain, carrying claim \(namespace)/\(claim)",
            "delete PersistentVolumeClaim \(namespace)/\(claim) (no pod can use the volume while it moves) and wait until it is gone",
        ], [
            "create PersistentVolume \(newName): volumeHandle \(newID), node affinity \(Self.zoneKey) in [\(zone)], "
                + "pre-bound to claim \(namespace)/\(claim)",
            "create PersistentVolumeClaim \(namespace)/\(claim) with the same spec, volumeName \(newName)",
            "delete PersistentVolume \(volume)",
        ])
    }

    /// Step 1: the old PV to Retain, carrying the claim and the target; the claim deleted.
    /// The claim's users are asked again right before: nothing may use it from here on.
    public func park(volume: String, target: String, progress: @Sendable (String) -> Void) async throws {
        let users = try await users(volume: volume)
        guard users.isEmpty else {
            throw RPCError(.failedPrecondition, "\(namespace)/\(claim) is in use (\(users.joined(separator: "; "))): "
                + "scale its workload down first, then run this again")
        }
        let pv = try await api.expect("GET", Self.volumePath(volume))
        let pvc = try await api.expect("GET", claimPath)
        progress("kubernetes: PersistentVolume \(volume) to Retain, carrying claim \(namespace)/\(claim); the claim deleted")
        var patch = JSONValue.object([:])
            .setting(["metadata", "annotations", Self.claimAnnotation], to: .string(String(decoding: savedClaim(pvc).serialized(), as: UTF8.self)))
            .setting(["metadata", "annotations", Self.targetAnnotation], to: .string(target))
        if pv["spec"]["persistentVolumeReclaimPolicy"].string != "Retain" {
            patch = patch.setting(["spec", "persistentVolumeReclaimPolicy"], to: .string("Retain"))
                .setting(["metadata", "annotations", Self.policyAnnotation], to: .string(pv["spec"]["persistentVolumeReclaimPolicy"].string ?? "Delete"))
        }
        _ = try await api.expect("PATCH", Self.volumePath(volume), body: patch, contentType: "application/merge-patch+json")
        _ = try await api.expect("DELETE", claimPath, accepting: [200, 202, 404])
        try await waitUntilGone(claimPath)
    }

    /// Step 3: the new PV, the claim made again bound to it, the old PV deleted; returns the new PV's name.
    public func rebind(newID: String, zone: String, progress: @Sendable (String) -> Void) async throws -> String {
        while true {
            switch try await stage() {
            case .bound:
                throw RPCError(.internal, "claim \(namespace)/\(claim) is bound to its old volume again; run the move again")
            case let .parked(volume, _, _):
                let pv = try await api.expect("GET", Self.volumePath(volume))
                let newName = Self.movedName(volume, newID: newID)
                progress("kubernetes: PersistentVolume \(newName) for \(newID), pre-bound to claim \(namespace)/\(claim)")
                try await create(newPersistentVolume(from: pv, name: newName, newID: newID, zone: zone))
            case let .gone(newVolume, _, _):
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
            case let .moved(newVolume, oldVolume, _, _):
                guard let oldVolume else { return newVolume }
                progress("kubernetes: PersistentVolume \(oldVolume) deleted (Retain: its volume goes with the move)")
                _ = try await api.expect("DELETE", Self.volumePath(oldVolume), accepting: [200, 202, 404])
                try await waitUntilGone(Self.volumePath(oldVolume))
            }
        }
    }

    /// Step 4: the moved PV loses the move's annotations: a later move of the claim starts afresh.
    public func finish(newVolume: String) async throws {
        var patch = JSONValue.object([:])
        for key in Self.moveAnnotations { patch = patch.setting(["metadata", "annotations", key], to: .null) }
        _ = try await api.expect("PATCH", Self.volumePath(newVolume), body: patch, contentType: "application/merge-patch+json")
    }

    private func create(_ pv: JSONValue) async throws {
        let response = try await api.call("POST", "/api/v1/persistentvolumes", body: pv)
        guard [200, 201, 409].contains(response.status) else {
            throw KubernetesAPI.Failure(description: "POST /api/v1/persistentvolumes: \(response.body["message"].string ?? "HTTP \(response.status)")")
        }
    }

    /// The old PV's spec with the new handle, the target's zone and a claimRef
    /// naming the claim (no uid: the claim made again binds to it).
    func newPersistentVolume(from pv: JSONValue, name: String, newID: String, zone: String) -> JSONValue {
        var annotations = pv["metadata"]["annotations"].object ?? [:]
        let policy = annotations.removeValue(forKey: Self.policyAnnotation)?.string ?? pv["spec"]["persistentVolumeReclaimPolicy"].string ?? "Delete"
        // The claim and the target ride along from the old PV.
        annotations[Self.fromAnnotation] = .string(pv["metadata"]["name"].string ?? "")
        annotations[Self.fromVolumeAnnotation] = .string(pv["spec"]["csi"]["volumeHandle"].string ?? "")
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
            // ownerReferences too: a StatefulSet's retention policy still reaches the claim.
            "metadata": .object(["name": .string(claim), "namespace": .string(namespace), "labels": pvc["metadata"]["labels"],
                                 "annotations": .object(annotations), "ownerReferences": pvc["metadata"]["ownerReferences"]]),
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
