@testable import CSIDriver
@testable import ProxmoxDomain
import ProxmoxAPI
import Testing
import UnaryGRPC

// The one mapping of domain and Proxmox errors to gRPC codes (issue 13, item 1).
@Suite struct DomainErrorTests {
    @Test(arguments: [
        (DomainError.notFound("cluster \"x\" is not in the driver's config"), StatusCode.notFound),
        (.conflict("node id n matches 2 VMs"), .failedPrecondition),
        (.busy("VM 9 is being created"), .aborted),
        (.notYet("the copy did not appear"), .unavailable),
        (.inconsistent("the copy VM vanished"), .internal),
    ])
    func eachDomainErrorHasOneCodeAndKeepsItsWords(error: DomainError, code: StatusCode) {
        let mapped = rpcError(error, "CreateVolume pvc-1")
        #expect(mapped.code == code)
        #expect(mapped.message == "CreateVolume pvc-1: \(error.description)")
        // Without an operation's context (straight to the gRPC layer) the code is the same.
        #expect(RPCError(from: error).code == code && RPCError(from: error).message == error.description)
    }

    @Test func anErrorNobodyMappedIsInternalAndAnRPCErrorPassesUnchanged() {
        struct Unmapped: Error {}
        #expect(rpcError(Unmapped(), "DeleteVolume v").code == .internal)
        let given = RPCError(.outOfRange, "too big")
        let passed = rpcError(given, "CreateVolume pvc-1")
        #expect(passed.code == .outOfRange && passed.message == "too big")
        #expect(rpcError(CancellationError(), "CreateVolume pvc-1").code == .cancelled)
    }

    @Test func anUnmappedErrorsDetailsReachOnlyTheLogNotTheClient() {
        struct Revealing: Error, CustomStringConvertible { var description: String { "open /etc/pve/priv/token.cfg failed" } }
        for mapped in [rpcError(Revealing(), "DeleteVolume v"), RPCError(from: Revealing())] {
            #expect(mapped.code == .internal)
            #expect(!mapped.message.contains("/etc/pve") && mapped.message.contains("internal error"))
            #expect(mapped.cause.map { "\($0)" }?.contains("/etc/pve/priv") == true)  // logged as grpc.cause
        }
        #expect(rpcError(Revealing(), "DeleteVolume v").message.hasPrefix("DeleteVolume v: "))
    }
}
