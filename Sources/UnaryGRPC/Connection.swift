#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// One accepted client connection, served by the event loop it was given.
///
/// The loop's thread owns the socket and the nghttp2 session and calls the
/// `on…` methods and `settle`. Immediate and on-loop handlers answer there and
/// then; the others (and an on-loop handler's `.later` part) run as tasks and
/// hand their results back through `complete`, which queues them and tells the
/// loop; the loop delivers them and writes all pending frames with one `send`.
final class Connection: @unchecked Sendable {
    private struct Inbox {
        var results: [(streamID: Int32, result: Result<[UInt8], RPCError>)] = []
        var closed = false
    }

    enum ShutdownRequest: Int { case none = 0, graceful = 1, immediate = 2 }

    let id: Int
    let fd: Int32
    private let router: Router
    private let logger: Logger
    private let loop: EventLoop
    private let inbox = Mutex(Inbox())
    private let shutdownRequest = Atomic<Int>(ShutdownRequest.none.rawValue)

    // Owned by the loop's thread.
    private let session: HTTP2ServerSession
    private var running: [Int32: Task<Void, Never>] = [:]
    private var output: [UInt8] = []
    private var outputOffset = 0
    private var peerClosed = false
    private var terminated = false
    /// Whether the loop watches the socket for writability (output is waiting).
    var watchesWritable = false

    init(id: Int, fd: Int32, router: Router, limits: ServerLimits, logger: Logger, loop: EventLoop) {
        self.id = id
        self.fd = fd
        self.router = router
        self.logger = logger
        self.loop = loop
        session = HTTP2ServerSession(router: router, limits: limits, logger: logger)
        var one: Int32 = 1
        // Small responses must leave at once, not wait for Nagle.
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Called by handler tasks, from any thread.
    func complete(streamID: Int32, result: Result<[UInt8], RPCError>) {
        let queued = inbox.withLock { inbox -> Bool in
            guard !inbox.closed else { return false }
            inbox.results.append((streamID, result))
            return true
        }
        if queued { loop.notify(id) }
    }

    /// From any thread: `graceful` sends GOAWAY and lets open calls finish;
    /// `immediate` cancels them and closes.
    func requestShutdown(_ request: ShutdownRequest) {
        shutdownRequest.store(max(shutdownRequest.load(ordering: .relaxed), request.rawValue), ordering: .relaxed)
        loop.notify(id)
    }

    // MARK: - Called by the loop

    /// Results or a shutdown request arrived.
    func onNotified() {
        switch ShutdownRequest(rawValue: shutdownRequest.load(ordering: .relaxed)) ?? .none {
        case .immediate:
            session.terminate()
            terminated = true
            return
        case .graceful: session.goAway()
        case .none: break
        }
        deliverResults(to: session)
    }

    /// The socket is readable (or hung up).
    func onReadable(buffer: UnsafeMutableRawBufferPointer) {
        guard !peerClosed, !terminated else { return }
        peerClosed = !readAvailable(into: session, buffer: buffer)
        startReadyCalls(from: session)
    }

    /// A stream's deadline has passed.
    func hasDeadline(dueBy now: MonotonicInstant) -> Bool {
        session.nextDeadline().map { $0 <= now } ?? false
    }

    func nextDeadline() -> MonotonicInstant? { session.nextDeadline() }

    /// After the loop's events: expires deadlines, writes what is pending.
    /// False when the connection is finished (its socket then closed).
    func settle() -> Bool {
        cancel(session.takeClosedDispatchedStreams())
        cancel(session.expireDeadlines(now: .now()))
        session.drainOutput(into: &output)
        let flushed = flush()
        if !flushed || terminated || peerClosed || (!session.isAlive && outputOffset == output.count) {
            finish()
            return false
        }
        return true
    }

    /// Output is waiting for the socket to take it.
    var hasPendingOutput: Bool { outputOffset < output.count }

    /// Ends the connection now (the server is stopping past its grace period).
    func close() {
        session.terminate()
        session.drainOutput(into: &output)
        _ = flush()
        finish()
    }

    // MARK: - Loop thread helpers

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
            let context = CallContext(method: call.path, deadline: call.deadline, logger: logger)
            let streamID = call.streamID
            if let immediate = router.immediateHandler(for: call.path) {
                switch immediate(call.message, context) {
                case let .done(result):
                    session.respond(streamID: streamID, result: result)  // (past its deadline: the router said so)
                case let .later(work):
                    running[streamID] = Task(executorPreference: loop) {
                        self.complete(streamID: streamID, result: await work())
                    }
                }
                continue
            }
            guard let handler = router.handler(for: call.path) else { continue }
            let message = call.message
            running[streamID] = Task {
                self.complete(streamID: streamID, result: await handler(message, context))
            }
        }
    }

    private func deliverResults(to session: HTTP2ServerSession) {
        let results = inbox.withLock { inbox in
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

    private func finish() {
        for task in running.values { task.cancel() }
        running.removeAll()
        inbox.withLock { inbox in
            inbox.closed = true
            inbox.results.removeAll()
        }
        Glibc.close(fd)
    }
}
