#if canImport(Glibc)
import Glibc
#endif
@testable import Metrics
import Testing
import UnaryGRPC

@Suite struct ExpositionTests {
    @Test func countersRenderSortedWithEscapedLabels() {
        let registry = MetricsRegistry()
        let calls = registry.register(CounterFamily("rpc_total", help: "Calls.", labels: ["method", "code"]))
        calls.increment(["/b", "OK"])
        calls.increment(["/a", "OK"], by: 2)
        calls.increment(["/a \"quoted\"\\n", "INTERNAL"])
        #expect(registry.render() == """
        # HELP rpc_total Calls.
        # TYPE rpc_total counter
        rpc_total{method="/a",code="OK"} 2
        rpc_total{method="/a \\"quoted\\"\\\\n",code="INTERNAL"} 1
        rpc_total{method="/b",code="OK"} 1

        """)
    }

    @Test func histogramsAreCumulativeWithSumAndCount() {
        let registry = MetricsRegistry()
        let latency = registry.register(HistogramFamily("lat_seconds", help: "Latency.", labels: ["m"], bounds: [0.1, 1]))
        latency.observe(["x"], 0.05)
        latency.observe(["x"], 0.5)
        latency.observe(["x"], 3)
        #expect(registry.render() == """
        # HELP lat_seconds Latency.
        # TYPE lat_seconds histogram
        lat_seconds_bucket{m="x",le="0.1"} 1
        lat_seconds_bucket{m="x",le="1"} 2
        lat_seconds_bucket{m="x",le="+Inf"} 3
        lat_seconds_sum{m="x"} 3.55
        lat_seconds_count{m="x"} 3

        """)
    }

    @Test func infoIsAGaugeOfOne() {
        let registry = MetricsRegistry()
        _ = registry.register(InfoFamily("build_info", help: "Build.", labels: [("version", "1.2.3")]))
        #expect(registry.render().hasSuffix("build_info{version=\"1.2.3\"} 1\n"))
    }
}

@Suite struct MetricsEndpointTests {
    func get(_ endpoint: Endpoint, _ request: String) throws -> String {
        guard case let .tcp(_, port) = endpoint else { throw EndpointMissing() }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw EndpointMissing() }
        _ = request.withCString { send(fd, $0, strlen($0), 0) }
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            reply += buffer[0..<count]
        }
        return String(decoding: reply, as: UTF8.self)
    }

    struct EndpointMissing: Error {}

    @Test func servesTheRegistryAtSlashMetricsOnly() throws {
        let registry = MetricsRegistry()
        registry.register(CounterFamily("hits_total", help: "Hits.", labels: [])).increment([])
        let server = try MetricsServer(endpoint: .tcp(host: "127.0.0.1", port: 0), registry: registry)
        server.start()
        defer { server.stop() }
        let ok = try get(server.endpoint, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(ok.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(ok.contains("Content-Type: text/plain; version=0.0.4"))
        #expect(ok.hasSuffix("\r\n\r\n# HELP hits_total Hits.\n# TYPE hits_total counter\nhits_total 1\n"))
        #expect(try get(server.endpoint, "GET /other HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 404"))
        #expect(try get(server.endpoint, "POST /metrics HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 405"))
        #expect(try get(server.endpoint, "garbage\r\n\r\n").hasPrefix("HTTP/1.1 400"))
    }
}
