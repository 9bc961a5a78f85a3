import FakeProxmox
import Foundation
import ProxmoxAPI
import Synchronization
import Testing

/// One simulator for the tests that change only their own volumes and VMs.
let shared = Result { try SimulatorProcess() }
/// Another for the tests that inject faults (they apply to every request).
let faulty = Result { try SimulatorProcess() }

func unique(_ prefix: String) -> String { "\(prefix)-\(UUID().uuidString.prefix(8).lowercased())" }

/// Tests run in parallel: each takes its own vmid (asking nextid and then
/// creating races, in Proxmox as here).
let nextTestVMID = Atomic<Int>(1000)

func expectProxmoxError(_ body: () async throws -> Void, _ check: (ProxmoxError) -> Bool,
                        sourceLocation: SourceLocation = #_sourceLocation) async {
    do {
        try await body()
        Issue.record("expected a ProxmoxError, got success", sourceLocation: sourceLocation)
    } catch let error as ProxmoxError {
        #expect(check(error), "unexpected \(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected a ProxmoxError, got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct ProxmoxClientTests {
    @Test func talksHTTPSVerifiedAgainstTheConfiguredCA() async throws {
        let sim = try shared.get()
        let version = try await sim.client().version()
        #expect(version.version.hasPrefix("9."))
    }

    @Test func refusesAServerSignedByAnotherCA() async throws {
        let sim = try shared.get()
        let other = try TestCertificates.make(name: "other")
        await expectProxmoxError({ _ = try await sim.client(caFile: other.caFile).version() }) {
            if case .transport(.tlsVerification) = $0 { true } else { false }
        }
        // Only an explicit opt-out skips verification.
        #expect(try await sim.client(caFile: other.caFile, insecure: true).version().version.hasPrefix("9."))
    }

    @Test func wrongTokenIsAuthenticationFailed() async throws {
        let sim = try shared.get()
        await expectProxmoxError({ _ = try await sim.client(.apiToken(id: "csi@pve!csi", secret: "wrong")).version() }) {
            $0 == .authenticationFailed(reason: "authentication failure")
        }
    }

    @Test func missingPrivilegeNamesPathAndPrivilege() async throws {
        let sim = try shared.get()
        let client = sim.client(SimulatorProcess.auditToken)
        await expectProxmoxError({
            _ = try await client.allocateVolume(node: "pve1", storage: "local-lvm", vmid: 9999, name: unique("vm-9999-x"), size: "1G")
        }) {
            if case let .permissionDenied(path, privilege, _) = $0 {
                path == "/storage/local-lvm" && privilege == "Datastore.AllocateSpace"
            } else { false }
        }
    }

    @Test func parameterErrorsCarryProxmoxsMessagePerField() async throws {
        let sim = try shared.get()
        await expectProxmoxError({
            _ = try await sim.client().allocateVolume(node: "pve1", storage: "local-lvm", vmid: 9999, name: "vm-9999-x", size: "1T")
        }) { $0 == .invalidParameters(["size": "value does not match the regex pattern"]) }
    }

    @Test func missingVMIsNotFound() async throws {
        let sim = try shared.get()
        await expectProxmoxError({ _ = try await sim.client().vmConfig(node: "pve1", vmid: 4242) }) {
            if case .notFound = $0 { true } else { false }
        }
    }

    @Test func volumeLifecycleWithFormEncodedDiskOptionsAndResize() async throws {
        let sim = try shared.get()
        let client = sim.client()
        let name = unique("vm-9999-pvc")
        let volid = try await client.allocateVolume(node: "pve1", storage: "local-lvm", vmid: 9999, name: name, size: "1G")
        #expect(volid == "local-lvm:\(name)")
        #expect(try await client.volumes(node: "pve1", storage: "local-lvm", vmid: 9999).contains { $0.volid == volid })

        let vm = try await makeVM(client)
        // Commas, '=' and '+' must reach Proxmox intact.
        try await client.updateVMConfig(node: "pve1", vmid: vm, set: [("scsi1", "\(volid),serial=pvc-a,discard=on,wwn=0x5056432d49443031")])
        try await client.resize(node: "pve1", vmid: vm, disk: "scsi1", size: "+1G")
        let config = try await client.vmConfig(node: "pve1", vmid: vm)
        #expect(config["scsi1"] == "\(volid),discard=on,serial=pvc-a,wwn=0x5056432d49443031,size=2G")
        #expect(config.digest.count == 40)

        try await client.updateVMConfig(node: "pve1", vmid: vm, delete: ["scsi1"])
        try await client.deleteVolume(node: "pve1", storage: "local-lvm", volid: volid)
        #expect(try await !client.volumes(node: "pve1", storage: "local-lvm", vmid: 9999).contains { $0.volid == volid })
    }

    @Test func failedTaskCarriesItsExitStatus() async throws {
        let sim = try shared.get()
        let client = sim.client()
        let vm = try await makeVM(client, disk: "local-lvm:1")
        await expectProxmoxError({ try await client.resize(node: "pve1", vmid: vm, disk: "scsi0", size: "512M") }) {
            if case let .taskFailed(upid, exit) = $0 { upid.hasPrefix("UPID:pve1:") && exit == "shrinking disks is not supported" } else { false }
        }
    }

    @Test func staleDigestIsADigestConflict() async throws {
        let sim = try shared.get()
        let client = sim.client()
        let vm = try await makeVM(client)
        let old = try await client.vmConfig(node: "pve1", vmid: vm).digest
        try await client.updateVMConfig(node: "pve1", vmid: vm, set: [("description", "changed")])
        await expectProxmoxError({
            try await client.updateVMConfig(node: "pve1", vmid: vm, set: [("description", "mine")], digest: old)
        }) { if case .digestConflict = $0 { true } else { false } }
        #expect(try await client.vmConfig(node: "pve1", vmid: vm)["description"] == "changed")
    }

    @Test func lockedVMIsReportedWithItsLock() async throws {
        let sim = try shared.get()
        let client = sim.client(retry: RetryPolicy(maxAttempts: 1))
        let vm = try await makeVM(client)
        try await sim.hook("PUT", "/_sim/lock", [("vmid", String(vm)), ("lock", "backup")])
        await expectProxmoxError({ try await client.updateVMConfig(node: "pve1", vmid: vm, set: [("description", "x")]) }) {
            $0 == .vmLocked(vmid: vm, lock: "backup")
        }
    }

    @Test func ticketAuthWorksAndRenewsBeforeExpiry() async throws {
        let sim = try shared.get()
        let clock = Mutex<Double>(1_000)
        let client = sim.client(SimulatorProcess.user, now: { clock.withLock { $0 } })
        _ = try await client.version()
        let vm = try await makeVM(client)  // a write: needs the CSRF token
        clock.withLock { $0 += 3_601 }
        try await client.updateVMConfig(node: "pve1", vmid: vm, set: [("description", "after renewal")])
        let tickets = try await sim.requests().filter { $0.1 == "/api2/json/access/ticket" }
        #expect(tickets.count >= 2)
    }

    @Test func manyConcurrentRequestsShareTheTransport() async throws {
        let sim = try shared.get()
        let client = sim.client()
        let versions = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<100 { group.addTask { try await client.version().version } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(versions.count == 100 && Set(versions).count == 1)
    }

    @Test func unknownEndpointIs501() async throws {
        let sim = try shared.get()
        await expectProxmoxError({ _ = try await sim.client().call("GET", "/nodes/pve1/nothing") }) {
            if case .server(501, _) = $0 { true } else { false }
        }
    }

    /// A VM of its own for one test, with an optional first disk.
    func makeVM(_ client: ProxmoxClient, disk: String? = nil) async throws -> Int {
        let vmid = nextTestVMID.add(1, ordering: .relaxed).newValue
        var settings = [("name", unique("test"))]
        if let disk { settings.append(("scsi0", disk)) }
        try await client.createVM(node: "pve1", vmid: vmid, settings: settings)
        return vmid
    }
}

@Suite(.serialized) struct RetryTests {
    @Test func readsAreRetriedThroughProxyErrors() async throws {
        let sim = try faulty.get()
        try await sim.injectFaults(#"[{"path": "^/version$", "status": 596, "count": 2}]"#)
        #expect(try await sim.client().version().version.hasPrefix("9."))
        try await sim.injectFaults("[]")
    }

    @Test func allocationsAreNotRetriedBlindly() async throws {
        let sim = try faulty.get()
        try await sim.hook("DELETE", "/_sim/log")
        try await sim.injectFaults(#"[{"method": "POST", "path": "/content$", "status": 596, "count": 1}]"#)
        await expectProxmoxError({
            _ = try await sim.client().allocateVolume(node: "pve1", storage: "local-lvm", vmid: 9999, name: unique("vm-9999-r"), size: "1G")
        }) { if case .proxy(596, _) = $0 { true } else { false } }
        #expect(try await sim.requests().filter { $0.0 == "POST" }.count == 1)
        try await sim.injectFaults("[]")
    }

    @Test func allocationsAreRetriedWhenTheErrorProvesNothingHappened() async throws {
        let sim = try faulty.get()
        try await sim.hook("DELETE", "/_sim/log")
        try await sim.injectFaults(#"[{"method": "POST", "path": "/content$", "status": 595, "count": 1}]"#)
        let name = unique("vm-9999-r")
        let volid = try await sim.client().allocateVolume(node: "pve1", storage: "local-lvm", vmid: 9999, name: name, size: "1G")
        #expect(volid == "local-lvm:\(name)")
        #expect(try await sim.requests().filter { $0.0 == "POST" }.count == 2)
        try await sim.injectFaults("[]")
    }

    @Test func configLockTimeoutsAreRetried() async throws {
        let sim = try faulty.get()
        let client = sim.client()
        let vm = nextTestVMID.add(1, ordering: .relaxed).newValue
        try await client.createVM(node: "pve1", vmid: vm, settings: [("name", "locktest")])
        try await sim.hook("DELETE", "/_sim/log")
        try await sim.injectFaults(#"[{"method": "POST", "path": "/qemu/\#(vm)/config$", "status": 500, "#
            + #""message": "can't lock file '/var/lock/qemu-server/lock-\#(vm).conf' - got timeout", "count": 1}]"#)
        try await client.updateVMConfig(node: "pve1", vmid: vm, set: [("description", "after the lock")])
        #expect(try await sim.requests().filter { $0.0 == "POST" && $0.1.hasSuffix("/config") }.count == 2)
        #expect(try await client.vmConfig(node: "pve1", vmid: vm)["description"] == "after the lock")
        try await sim.injectFaults("[]")
    }

    @Test func giveUpAfterTheLastAttempt() async throws {
        let sim = try faulty.get()
        try await sim.injectFaults(#"[{"path": "^/version$", "status": 596}]"#)
        await expectProxmoxError({ _ = try await sim.client(retry: RetryPolicy(maxAttempts: 3, baseDelay: 0.001)).version() }) {
            if case .proxy(596, _) = $0 { true } else { false }
        }
        try await sim.injectFaults("[]")
    }

    @Test func cancellationStopsARequestInFlight() async throws {
        let sim = try faulty.get()
        try await sim.injectFaults(#"[{"path": "^/version$", "status": "timeout", "seconds": 30}]"#)
        let client = sim.client()
        let task = Task { try await client.version() }
        try await Task.sleep(nanoseconds: 200_000_000)
        task.cancel()
        // Left alone, the hang would end in a transport error after 30 s, not in cancellation.
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        try await sim.injectFaults("[]")
    }

    @Test func unreachableServerIsCannotConnect() async throws {
        let client = ProxmoxClient(endpoint: ClusterEndpoint(url: "https://127.0.0.1:1", credentials: SimulatorProcess.token),
                                   retry: RetryPolicy(maxAttempts: 1))
        await expectProxmoxError({ _ = try await client.version() }) {
            if case .transport(.cannotConnect) = $0 { true } else { false }
        }
    }
}
