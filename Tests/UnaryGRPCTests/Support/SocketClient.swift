#if canImport(Glibc)
import Glibc
#endif
@testable import UnaryGRPC

/// A blocking socket carrying an H2TestClient to a real server.
final class SocketClient {
    let h2 = H2TestClient()
    let fd: Int32

    init(_ endpoint: Endpoint) throws {
        switch endpoint {
        case let .unix(path):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: path.utf8)
                raw[path.utf8.count] = 0
            }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if result != 0 { close(fd); throw SystemCallError(call: "connect", errno: errno) }
        case let .tcp(_, port):
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if result != 0 { close(fd); throw SystemCallError(call: "connect", errno: errno) }
        }
    }

    deinit { close(fd) }

    /// Sends what the client has queued, then reads until `done` holds or
    /// `timeoutMilliseconds` pass. Returns whether `done` held.
    @discardableResult
    /// The timeout only bounds a hang: the server's handlers run on the cooperative
    /// pool, which other suites' blocking tests can hold for seconds on 2 cores.
    func exchange(timeoutMilliseconds: Int = 30_000, until done: (H2TestClient) -> Bool) -> Bool {
        let deadline = MonotonicInstant.now().advanced(byNanoseconds: UInt64(timeoutMilliseconds) * 1_000_000)
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let out = h2.drainOutput()
            if !out.isEmpty { _ = out.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
            if done(h2) { return true }
            let remaining = MonotonicInstant.now().nanoseconds(until: deadline)
            if remaining == 0 { return false }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, Int32(min(remaining / 1_000_000 + 1, 100))) > 0 {
                let count = recv(fd, &buffer, buffer.count, 0)
                if count <= 0 { return done(h2) }
                h2.receive(Array(buffer[..<count]))
            }
        }
    }

    /// True once every listed stream has closed.
    static func closed(_ ids: [Int32]) -> (H2TestClient) -> Bool {
        { client in ids.allSatisfy { client.responses[$0]?.closed == true } }
    }
}
