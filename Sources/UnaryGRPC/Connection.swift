#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// One accepted client connection, served by its own I/O thread.
///
/// The I/O thread owns the socket and the nghttp2 session. Handlers run as
/// tasks on Swift's pool and hand their results back through `complete`,
/// which queues them and wakes the I/O thread; the thread submits them and
/// writes all pending frames with one `write`.
final class Connection: @unchecked Sendable {
    private struct Inbox {
        var results: [(streamID: Int32, result: Result<[UInt8], RPCError>)] = []
        var wakePending = false
        var closed = false
    }

    enum ShutdownRequest: Int { case none = 0, graceful = 1, immediate = 2 }

    let id: Int
    private let fd: Int32
    private let router: Router
    private let logger: Logger
    private let limits: ServerLimits
    private let wake: WakeSignal
    private let inbox = Mutex(Inbox())
    private let shutdownRequest = Atomic<Int>(ShutdownRequest.none.rawValue)

    // Owned by the I/O thread.
    private var running: [Int32: Task<Void, Never>] = [:]
    private var output: [UInt8] = []
    private var outputOffset = 0

    init(id: Int, fd: Int32, router: Router, limits: ServerLimits, logger: Logger) throws(SystemCallError) {
        self.id = id
        self.fd = fd
        self.router = router
        self.limits = limits
        self.logger = logger
        wake = try WakeSignal()
        var one: Int32 = 1
        // Small responses must leave at once, not wait for Nagle.
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Called by handler tasks, from any thread.
    func complete(streamID: Int32, result: Result<[UInt8], RPCError>) {
        inbox.withLock { inbox in
            guard !inbox.closed else { return }
            inbox.results.append((streamID, result))
            if !inbox.wakePending {
                inbox.wakePending = true
                wake.signal()
            }
        }
    }

    /// From any thread: `graceful` sends GOAWAY and lets open calls finish;
    /// `immediate` cancels them and closes.
    func requestShutdown(_ request: ShutdownRequest) {
        shutdownRequest.store(max(shutdownRequest.load(ordering: .relaxed), request.rawValue), ordering: .relaxed)
        inbox.withLock { inbox in
            if !inbox.closed { wake.signal() }
        }
    }

    /// The I/O thread's body; returns when the connection is finished.
    func run() {
        let session = HTTP2ServerSession(router: router, limits: limits, logger: logger)
        let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer {
            readBuffer.deallocate()
            finish()
        }
        var peerClosed = false

        while true {
            session.drainOutput(into: &output)
            guard flush() else { break }
            if peerClosed || (!session.isAlive && outputOffset == output.count) { break }

            var fds = [
                pollfd(fd: fd, events: Int16(POLLIN) | (outputOffset < output.count ? Int16(POLLOUT) : 0), revents: 0),
                pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0),
            ]
            let timeout = pollTimeout(session.nextDeadline())
            if poll(&fds, 2, timeout) < 0 {
                if errno == EINTR { continue }
                logger.error("poll failed", metadata: ["error": "\(SystemCallError(call: "poll", errno: errno))"])
                break
            }

            if fds[1].revents != 0 {
                wake.drain()
                switch ShutdownRequest(rawValue: shutdownRequest.load(ordering: .relaxed)) ?? .none {
                case .immediate:
                    session.terminate()
                    session.drainOutput(into: &output)
                    _ = flush()
                    return
                case .graceful: session.goAway()
                case .none: break
                }
                deliverResults(to: session)
            }

            if fds[0].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                peerClosed = !readAvailable(into: session, buffer: readBuffer)
                startReadyCalls(from: session)
            }
            cancel(session.takeClosedDispatchedStreams())
            cancel(session.expireDeadlines(now: .now()))
        }
    }

    // MARK: - I/O thread helpers

    /// Reads until the socket would block. False when the peer is gone or
    /// broke the protocol (after queueing whatever GOAWAY nghttp2 wants sent).
    private func readAvailable(into session: HTTP2ServerSession, buffer: UnsafeMutableRawBufferPointer) -> Bool {
        while true {
            let count = recv(fd, buffer.baseAddress, buffer.count, 0)
            if count > 0 {
                do {
                    try session.receive(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
                } catch {
                    logger.debug("closing connection", metadata: ["grpc.connection": "\(id)", "error": "\(error)"])
                    session.drainOutput(into: &output)
                    _ = flush()
                    return false
                }
                if count < buffer.count { return true }
                continue
            }
            if count == 0 { return false }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return true
            default: return false
            }
        }
    }

    private func startReadyCalls(from session: HTTP2ServerSession) {
        for call in session.takeReadyCalls() {
            guard let handler = router.handler(for: call.path) else { continue }
            let context = CallContext(method: call.path, deadline: call.deadline, logger: logger)
            let streamID = call.streamID
            let message = call.message
            running[streamID] = Task {
                let result = await handler(message, context)
                self.complete(streamID: streamID, result: result)
            }
        }
    }

    private func deliverResults(to session: HTTP2ServerSession) {
        let results = inbox.withLock { inbox in
            inbox.wakePending = false
            defer { inbox.results.removeAll(keepingCapacity: true) }
            return inbox.results
        }
        for (streamID, result) in results {
            running[streamID] = nil
            session.respond(streamID: streamID, result: result)
        }
    }

    private func cancel(_ streamIDs: [Int32]) {
        for streamID in streamIDs {
            running.removeValue(forKey: streamID)?.cancel()
        }
    }

    /// Writes pending output without blocking. False on a broken socket.
    private func flush() -> Bool {
        while outputOffset < output.count {
            let written = output.withUnsafeBytes { bytes in
                send(fd, bytes.baseAddress! + outputOffset, bytes.count - outputOffset, Int32(MSG_NOSIGNAL))
            }
            if written > 0 {
                outputOffset += written
                continue
            }
            if written < 0, errno == EINTR { continue }
            if written < 0, errno == EAGAIN || errno == EWOULDBLOCK { return true }
            return false
        }
        output.removeAll(keepingCapacity: output.capacity <= 1 << 20)
        outputOffset = 0
        return true
    }

    private func pollTimeout(_ deadline: MonotonicInstant?) -> Int32 {
        guard let deadline else { return -1 }
        let nanoseconds = MonotonicInstant.now().nanoseconds(until: deadline)
        // Round up so a deadline is never checked a moment too early.
        return Int32(min((nanoseconds + 999_999) / 1_000_000, 60_000))
    }

    private func finish() {
        for task in running.values { task.cancel() }
        running.removeAll()
        inbox.withLock { inbox in
            inbox.closed = true
            inbox.results.removeAll()
        }
        close(fd)
    }
}
