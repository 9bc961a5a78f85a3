import Logging

/// The whole server-side wire path — HTTP/2 framing (nghttp2), gRPC message
/// framing, limits, trailers — driven from one byte buffer, with no socket or
/// thread: the entry point of the fuzz target (fuzz/). `handle` answers each
/// call that arrives complete, synchronously.
public enum WireFuzzing {
    public static func exchange(_ input: UnsafeRawBufferPointer,
                                handle: (_ path: String, _ message: [UInt8]) -> Result<[UInt8], RPCError>) {
        var logger = Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() })
        logger.logLevel = .critical
        let session = HTTP2ServerSession(router: Router(), limits: ServerLimits(), logger: logger)
        var output: [UInt8] = []
        // Two reads, split in the middle, so frames also arrive cut in two.
        let half = input.count / 2
        for part in [UnsafeRawBufferPointer(rebasing: input[..<half]), UnsafeRawBufferPointer(rebasing: input[half...])] {
            do {
                try session.receive(part)
            } catch {
                break  // a protocol error ends the connection, as the I/O loop does
            }
            for call in session.takeReadyCalls() {
                session.respond(streamID: call.streamID, result: handle(call.path, call.message))
            }
            _ = session.expireDeadlines(now: .now())
            session.drainOutput(into: &output)
            output.removeAll(keepingCapacity: true)
        }
        session.terminate()
        session.drainOutput(into: &output)
    }
}
