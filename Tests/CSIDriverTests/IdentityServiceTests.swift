import CSIDriver
import CSIProto
import Logging
import SwiftProtobuf
import Synchronization
import Testing
import UnaryGRPC

struct FixedCheck: ReadinessCheck {
    let name: String
    let reason: String?
    func unreadyReason() -> String? { reason }
}

func call<Response: SwiftProtobuf.Message>(
    _ router: Router, _ path: String, _ request: some SwiftProtobuf.Message,
    logger: Logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
) async throws -> Response {
    let context = CallContext(method: path, deadline: nil, logger: logger)
    switch await router.handle(path: path, message: try request.serializedBytes(), context: context) {
    case let .success(bytes): return try Response(serializedBytes: bytes)
    case let .failure(error): throw error
    }
}

@Suite struct IdentityServiceTests {
    @Test func pluginInfoNamesTheDriverAndBuild() async throws {
        let router = Driver(name: "csi.example.com", mode: .node).makeRouter()
        let info: Csi_V1_GetPluginInfoResponse = try await call(router, "/csi.v1.Identity/GetPluginInfo", Csi_V1_GetPluginInfoRequest())
        #expect(info.name == "csi.example.com")
        #expect(info.vendorVersion == DriverInfo.version)
        #expect(info.manifest["mode"] == "node")
    }

    @Test func capabilitiesListOnlyWhatIsServed() async throws {
        let router = Driver(name: "proxmox-csi", mode: .all).makeRouter()
        let response: Csi_V1_GetPluginCapabilitiesResponse =
            try await call(router, "/csi.v1.Identity/GetPluginCapabilities", Csi_V1_GetPluginCapabilitiesRequest())
        // No Controller service is served yet, so CONTROLLER_SERVICE must not be claimed.
        #expect(!response.capabilities.contains { $0.service.type == .controllerService })
        #expect(router.handler(for: "/csi.v1.Controller/CreateVolume") == nil)
    }

    @Test(arguments: [
        ([String?](), true),
        ([nil, nil], true),
        ([nil, "the Proxmox API has not answered for 45 s"], false),
    ])
    func probeIsReadyOnlyWhenEveryCheckIs(reasons: [String?], ready: Bool) async throws {
        let checks = reasons.enumerated().map { FixedCheck(name: "check-\($0.offset)", reason: $0.element) }
        let router = Driver(name: "proxmox-csi", mode: .controller, readiness: Readiness(checks)).makeRouter()
        let response: Csi_V1_ProbeResponse = try await call(router, "/csi.v1.Identity/Probe", Csi_V1_ProbeRequest())
        #expect(response.hasReady)
        #expect(response.ready.value == ready)
    }

    @Test(arguments: [
        ("proxmox-csi", nil),
        ("csi.proxmox.sinextra.dev", nil),
        ("", "empty"),
        ("-leading", "begin and end"),
        ("trailing.", "begin and end"),
        ("has_underscore", "\"_\""),
        (String(repeating: "a", count: 64), "limit is 63"),
    ] as [(String, String?)])
    func driverNamesFollowTheSpec(name: String, problem: String?) {
        let found = DriverInfo.problem(withName: name)
        if let problem {
            #expect(found?.contains(problem) == true, "\(String(describing: found))")
        } else {
            #expect(found == nil)
        }
    }
}

final class FakeClock: Sendable {
    let nanoseconds = Atomic<UInt64>(1_000)
    func advance(seconds: UInt64) { nanoseconds.add(seconds * 1_000_000_000, ordering: .relaxed) }
}

@Suite struct RecentSuccessTests {
    @Test func readyOnlyWithinTheWindowAfterASuccess() async {
        let clock = FakeClock()
        let check = RecentSuccess(name: "proxmox-api", maxAgeSeconds: 30) { clock.nanoseconds.load(ordering: .relaxed) }
        #expect(check.unreadyReason() == "has not answered yet")
        check.recordSuccess()
        clock.advance(seconds: 29)
        #expect(check.unreadyReason() == nil)
        clock.advance(seconds: 2)
        #expect(check.unreadyReason()?.contains("has not answered for 31 s") == true)
        check.recordSuccess()
        #expect(check.unreadyReason() == nil)
    }
}
