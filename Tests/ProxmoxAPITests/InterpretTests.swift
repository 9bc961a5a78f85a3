@testable import ProxmoxAPI
import Testing

/// Every way Proxmox answers, mapped to one error (or data).
@Suite struct InterpretTests {
    func response(_ status: Int, _ reason: String, _ body: String = "") -> HTTPResponse {
        HTTPResponse(status: status, reason: reason, body: Array(body.utf8))
    }

    @Test(arguments: [
        (401, "authentication failure", "", ProxmoxError.authenticationFailed(reason: "authentication failure")),
        (403, "Permission check failed (/vms/100, VM.Config.Disk)", "",
         .permissionDenied(path: "/vms/100", privilege: "VM.Config.Disk", message: "Permission check failed (/vms/100, VM.Config.Disk)")),
        (400, "Parameter verification failed.", #"{"data":null,"errors":{"size":"value does not match the regex pattern\n"}}"#,
         .invalidParameters(["size": "value does not match the regex pattern"])),
        (400, "no such task 'UPID:x'", "", .notFound("no such task 'UPID:x'")),
        (500, "VM is locked (snapshot)", "", .vmLocked(vmid: 100, lock: "snapshot")),
        (500, "checksum mismatch (file change by other user?)", "", .digestConflict("checksum mismatch (file change by other user?)")),
        (500, "detected modified configuration - file changed by other user? Try again.", "",
         .digestConflict("detected modified configuration - file changed by other user? Try again.")),
        (500, "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout", "",
         .configLockTimeout("can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout")),
        (500, "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist", "",
         .notFound("Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist")),
        (596, "Broken pipe", "", .proxy(status: 596, message: "Broken pipe")),
        (501, "Method 'GET /x' not implemented", "", .server(status: 501, message: "Method 'GET /x' not implemented")),
        // Newer servers also put the message in the body; an empty reason falls back to it.
        (500, "", #"{"data":null,"message":"storage 'x' does not exist\n"}"#, .notFound("storage 'x' does not exist")),
    ])
    func classifies(status: Int, reason: String, body: String, expected: ProxmoxError) {
        #expect(throws: expected) { try ProxmoxClient.interpret(response(status, reason, body), path: "/nodes/pve1/qemu/100/config") }
    }

    @Test func successReturnsTheEnvelopesData() throws {
        let data = try ProxmoxClient.interpret(response(200, "OK", #"{"data":{"version":"9.1.1"}}"#), path: "/version")
        #expect(data["version"].string == "9.1.1")
        #expect(throws: ProxmoxError.self) { try ProxmoxClient.interpret(response(200, "OK", "<html>"), path: "/version") }
    }

    @Test func transientAndSafeToRepeatAreDistinguished() {
        #expect(ProxmoxError.proxy(status: 596, message: "").isTransient)
        #expect(!ProxmoxError.proxy(status: 596, message: "").provesNothingHappened)
        #expect(ProxmoxError.proxy(status: 595, message: "").provesNothingHappened)
        #expect(ProxmoxError.configLockTimeout("").provesNothingHappened)
        #expect(!ProxmoxError.authenticationFailed(reason: "").isTransient)
        #expect(!ProxmoxError.digestConflict("").isTransient, "a stale digest needs a re-read, not a repeat")
    }
}
