#if canImport(Glibc)
import Glibc
#endif
import CommandLineOptions
import CSIDriver
import FoundationEssentials
import ProxmoxDomain
import ProxmoxAPI
import UnaryGRPC

/// Moves a PVC's volume (or a bare volume) to another Proxmox node: the
/// Proxmox side through VolumeMove, the Kubernetes side through ClaimMove.
/// Safe to run again after any interruption: each side goes on from where it stands.
struct MoveVolume: DriverCommand {
    static let spec = CommandSpec(
        name: "move-volume",
        abstract: "Move a detached volume on local storage to another Proxmox node, and rebind its PVC there.",
        discussion: """
        Needs a Proxmox token with the driver's privileges and VM.Migrate, and (with --pvc) a Kubernetes \
        service account that may get, create and delete PersistentVolumes and PersistentVolumeClaims, \
        patch PersistentVolumes and list pods and VolumeAttachments. Run it in the controller's pod, or \
        outside with --kube-api and --kube-token-file. Every change is printed as it is made; \
        --dry-run prints them and changes nothing.
        """,
        options: [
            .option("config", help: "The driver's config file (the Proxmox clusters and the token)."),
            .option("to-node", help: "The Proxmox node to move the volume to."),
            .option("pvc", help: "The claim to move, as NAMESPACE/NAME."),
            .option("volume-id", help: "A volume with no claim, by its CSI volume id."),
            .flag("dry-run", help: "Print every change, make none."),
            .option("timeout", help: "Seconds the whole move may take (a large volume copies twice).", default: "10800"),
            .option("driver-name", help: "The CSI driver name the PersistentVolumes carry.", default: DriverInfo.defaultName),
            .option("kube-api", help: "The Kubernetes API server (default: in-cluster)."),
            .option("kube-token-file", help: "A bearer token for --kube-api."),
            .option("kube-ca", help: "The CA of --kube-api."),
        ])

    let config: String
    let target: String
    let pvc: String?
    let volumeID: String?
    let dryRun: Bool
    let timeout: Double
    let driverName: String
    let kubeAPI: String?
    let kubeTokenFile: String?
    let kubeCA: String?

    init(_ options: ParsedOptions) throws {
        config = try options.required("config")
        target = try options.required("to-node")
        pvc = options.value("pvc")
        volumeID = options.value("volume-id")
        dryRun = options.flag("dry-run")
        timeout = try options.number("timeout", default: 10_800)
        driverName = options.value("driver-name") ?? DriverInfo.defaultName
        kubeAPI = options.value("kube-api")
        kubeTokenFile = options.value("kube-token-file")
        kubeCA = options.value("kube-ca")
        try validate()
    }

    func validate() throws {
        guard (pvc == nil) != (volumeID == nil) else { throw UsageError("give --pvc NAMESPACE/NAME or --volume-id, one of them") }
        if let pvc, pvc.split(separator: "/").count != 2 { throw UsageError("--pvc: \"\(pvc)\" is not NAMESPACE/NAME") }
        if kubeAPI != nil, kubeTokenFile == nil { throw UsageError("--kube-api needs --kube-token-file") }
    }

    func run() async throws {
        let loaded = try loadConfig(config)
        let clusters = ProxmoxClusters(config: loaded, metrics: nil)
        let volumes = ProxmoxVolumes(clusters: clusters.ordered, ownerVMID: loaded.ownerVMID, taskTimeout: timeout)
        let controller = ControllerService(volumes: volumes, config: loaded)
        do {
            if let volumeID {
                try await moveBare(volumeID, controller: controller)
            } else {
                try await moveClaim(controller: controller)
            }
        } catch let error as RPCError {
            throw RuntimeFailure(description: error.message)
        } catch {
            throw RuntimeFailure(description: "\(error)")
        }
    }

    private func moveBare(_ id: String, controller: ControllerService) async throws {
        let move = VolumeMove(volumeID: id, target: target)
        let stage = try await controller.stage(of: move)
        if dryRun { return say(Self.proxmoxPlan(stage, move)) }
        let moved = try await controller.run(move, timeout: timeout, progress: printLine)
        printLine("moved: \(id) is \(moved); a PersistentVolume naming it must be made anew (--pvc does that)")
    }

    private func moveClaim(controller: ControllerService) async throws {
        let parts = pvc!.split(separator: "/").map(String.init)
        guard let api = kubeAPI.map({ KubernetesAPI(apiURL: $0, tokenFile: kubeTokenFile!, caFile: kubeCA) }) ?? KubernetesAPI.inCluster() else {
            throw RuntimeFailure(description: "no Kubernetes API: run in a pod, or give --kube-api and --kube-token-file")
        }
        let claim = ClaimMove(api: api, namespace: parts[0], claim: parts[1], driverName: driverName)
        // Each stage leads to the next; a rerun enters wherever an earlier run stopped.
        var stage = try await claim.stage()
        while true {
            switch stage {
            case let .bound(volume, volumeID):
                if (try? VolumeHandle(parsing: volumeID))?.node == target {
                    return printLine("moved: \(pvc!) is bound to \(volumeID) on \(target)")
                }
                let users = try await claim.users(volume: volume)
                if !users.isEmpty {
                    throw RuntimeFailure(description: "\(pvc!) is in use (\(users.joined(separator: "; "))): "
                        + "scale its workload down first; nothing was changed")
                }
                let move = VolumeMove(volumeID: volumeID, target: target)
                let proxmox = try await controller.stage(of: move)
                if dryRun {
                    let kubernetes = claim.plan(volume: volume, newID: Self.predictedID(proxmox, move), zone: target)
                    say(kubernetes.before.map { "kubernetes: " + $0 })
                    say(Self.proxmoxPlan(proxmox, move, keepOriginal: true))
                    say(kubernetes.after.map { "kubernetes: " + $0 })
                    return say(["proxmox: delete the original \(volumeID)"])
                }
                try await claim.park(volume: volume, target: target, progress: printLine)
            case let .parked(_, volumeID, parkedFor), let .gone(_, volumeID, parkedFor):
                try requireTarget(parkedFor)
                if dryRun { return say(["a move of \(pvc!) to \(parkedFor) is under way: run it again without --dry-run to go on"]) }
                let moved = try await controller.run(VolumeMove(volumeID: volumeID, target: target), timeout: timeout,
                                                     keepOriginal: true, progress: printLine)
                _ = try await claim.rebind(newID: moved, zone: target, progress: printLine)
            case let .moved(newVolume, oldVolume, originalID, movedTo):
                try requireTarget(movedTo)
                if dryRun { return say(["a move of \(pvc!) to \(movedTo) is under way: run it again without --dry-run to go on"]) }
                if oldVolume != nil { _ = try await claim.rebind(newID: "", zone: target, progress: printLine) }
                let moved = try await controller.run(VolumeMove(volumeID: originalID, target: target), timeout: timeout, progress: printLine)
                try await claim.finish(newVolume: newVolume)
                return printLine("moved: \(pvc!) is bound to \(moved) on \(target)")
            }
            stage = try await claim.stage()
        }
    }

    /// A move under way goes on to the node it was started for, whatever this run names.
    private func requireTarget(_ started: String) throws {
        guard started == target else {
            throw RuntimeFailure(description: "\(pvc!) is being moved to \(started): run the move with --to-node \(started) to finish it first")
        }
    }

    static func proxmoxPlan(_ stage: VolumeMove.Stage, _ move: VolumeMove, keepOriginal: Bool = false) -> [String] {
        var steps: [String] = []
        switch stage {
        case let .copy(from, storage, bytes):
            steps.append("proxmox: copy \(move.volumeID) (\(bytes) bytes) into a new stopped record VM on \(from), storage \(storage)")
            fallthrough
        case .copying:
            steps.append("proxmox: migrate that VM offline to \(move.target) (its copy goes with it)")
        case let .migrate(vm, from, migrating):
            steps.append(migrating ? "proxmox: wait for VM \(vm) migrating to \(move.target)" : "proxmox: migrate VM \(vm) from \(from) to \(move.target)")
        case .deleteOriginal, .done:
            break
        }
        if !keepOriginal, case .done = stage {} else if !keepOriginal { steps.append("proxmox: delete the original \(move.volumeID)") }
        return steps.isEmpty ? ["nothing to do: the move is done"] : steps
    }

    static func predictedID(_ stage: VolumeMove.Stage, _ move: VolumeMove) -> String {
        if case let .deleteOriginal(newID) = stage { return newID }
        let parts = move.volumeID.split(separator: "/", omittingEmptySubsequences: false)
        return "\(parts.first ?? "")/\(move.target)/\(parts.count > 2 ? parts[2] : "")/vm-<record VM>-disk-0"
    }

    private func say(_ lines: [String]) {
        lines.forEach(printLine)
    }
}

/// Progress lines go to standard output at once: a caller (or a test) reads them as they come.
@Sendable func printLine(_ line: String) {
    var text = line + "\n"
    text.withUTF8 { bytes in _ = Glibc.write(1, bytes.baseAddress, bytes.count) }
}
