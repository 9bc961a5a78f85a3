#if canImport(Glibc)
import Glibc
#endif
import CLinux
import Dispatch
import Synchronization
import UnaryGRPC

/// Serves `GET /metrics` over HTTP/1.1 for Prometheus, one short connection
/// at a time on a thread of its own (scrapes are rare and small).
public final class MetricsServer: Sendable {
    let registry: MetricsRegistry
    let listener: ListeningSocket
    private let stopping = Atomic<Bool>(false)
    private let stopped = DispatchSemaphore(value: 0)

    /// The address as bound (port 0 replaced by the real one).
    public var endpoint: Endpoint { listener.endpoint }

    public init(endpoint: Endpoint, registry: MetricsRegistry) throws {
        self.registry = registry
        listener = try ListeningSocket.open(endpoint)
    }

    public func start() {
        // Without a thread the endpoint would be silently dead; a failed start is a crash worth seeing.
        let thread = try! spawnThread(named: "metrics") { [self] in
            while !stopping.load(ordering: .relaxed) { serveOne() }
            listener.close()
            stopped.signal()
        }
        pthread_detach(thread)
    }

    public func stop() {
        stopping.store(true, ordering: .relaxed)
        stopped.wait()
    }

    private func serveOne() {
        var ready = pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0)
        guard poll(&ready, 1, 200) > 0 else { return }
        let fd = CLinux_accept4(listener.fd, Int32(SOCK_CLOEXEC.rawValue))
        guard fd >= 0 else { return }
        defer { close(fd) }
        // A client that never finishes its request must not stall the endpoint.
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let response = Self.respond(to: Self.readHead(fd), registry: registry)
        var bytes = Array(response.utf8)
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeMutableBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { return }
            sent += count
        }
    }

    /// The request line and headers (up to 8 KiB); the body, if any, is ignored.
    static func readHead(_ fd: Int32) -> String {
        var head: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1024)
        while head.count < 8192 {
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            head += buffer[0..<count]
            if head.count >= 4, String(decoding: head.suffix(min(head.count, 1028)), as: UTF8.self).contains("\r\n\r\n") { break }
        }
        return String(decoding: head, as: UTF8.self)
    }

    static func respond(to head: String, registry: MetricsRegistry) -> String {
        let requestLine = head.split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? ""
        let parts = requestLine.split(separator: " ")
        func reply(_ status: String, _ type: String, _ body: String) -> String {
            "HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        }
        guard parts.count == 3 else { return reply("400 Bad Request", "text/plain", "bad request\n") }
        guard parts[0] == "GET" || parts[0] == "HEAD" else { return reply("405 Method Not Allowed", "text/plain", "only GET\n") }
        let path = parts[1].split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard path == "/metrics" else { return reply("404 Not Found", "text/plain", "metrics are at /metrics\n") }
        let text = reply("200 OK", "text/plain; version=0.0.4; charset=utf-8", registry.render())
        return parts[0] == "HEAD" ? String(text.prefix(upTo: text.firstRange(of: "\r\n\r\n")!.upperBound)) : text
    }
}
