#if canImport(Glibc)
import Glibc
#endif
import CLinux
import Logging
import Synchronization

/// A unary gRPC server on one endpoint.
///
/// `start` binds and returns at once; an accept thread hands each connection
/// to one of a few event loops (one per core, at most four). `shutdown` stops accepting, removes the unix
/// socket, sends GOAWAY, lets in-flight calls finish within a grace period,
/// then cancels what is left. State changes happen under a lock and do no I/O.
public final class Server: Sendable {
    private enum State {
        case idle
        case running(listener: ListeningSocket, acceptThread: pthread_t, loops: [EventLoop])
        case stopping
        case stopped
    }

    private struct Registry {
        var connections: [Int: Connection] = [:]
        var nextID = 0
    }

    public let configuredEndpoint: Endpoint
    private let router: Router
    private let limits: ServerLimits
    private let logger: Logger
    private let acceptWake: WakeSignal
    private let state = Mutex<State>(.idle)
    private let registry = Mutex(Registry())

    public init(endpoint: Endpoint, router: Router, limits: ServerLimits = ServerLimits(), logger: Logger) throws {
        configuredEndpoint = endpoint
        self.router = router
        self.limits = limits
        self.logger = logger
        acceptWake = try WakeSignal()
    }

    public enum StartError: Error, CustomStringConvertible {
        case notIdle
        case listen(ListenError)
        case thread(SystemCallError)

        public var description: String {
            switch self {
            case .notIdle: "the server was already started"
            case let .listen(error): "\(error)"
            case let .thread(error): "\(error)"
            }
        }
    }

    /// Binds and starts serving. Returns the endpoint as bound (a tcp port 0
    /// replaced by the port the system chose).
    @discardableResult
    public func start() throws(StartError) -> Endpoint {
        let isIdle = state.withLock { state -> Bool in
            if case .idle = state { state = .stopping; return true }  // reserved while binding
            return false
        }
        guard isIdle else { throw .notIdle }
        let listener: ListeningSocket
        do {
            listener = try ListeningSocket.open(configuredEndpoint)
        } catch {
            state.withLock { $0 = .idle }
            throw .listen(error)
        }
        do throws(SystemCallError) {
            let cores = max(1, min(Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), 4))
            var started: [EventLoop] = []
            do throws(SystemCallError) {
                for index in 0..<cores {
                    started.append(try EventLoop(named: "grpc-loop-\(index)", logger: logger) { [self] id in
                        registry.withLock { _ = $0.connections.removeValue(forKey: id) }
                    })
                }
                let loops = started
                let thread = try spawnThread(named: "grpc-accept") { [self] in acceptLoop(listener, loops: loops) }
                state.withLock { $0 = .running(listener: listener, acceptThread: thread, loops: loops) }
            } catch {
                for loop in started { loop.stop() }
                throw error
            }
        } catch {
            listener.close()
            state.withLock { $0 = .idle }
            throw .thread(error)
        }
        logger.info("listening", metadata: ["grpc.endpoint": "\(listener.endpoint)"])
        return listener.endpoint
    }

    /// Stops the server; blocks until every connection is closed. In-flight
    /// calls get up to `gracePeriodNanoseconds` to finish.
    public func shutdown(gracePeriodNanoseconds: UInt64 = 10_000_000_000) {
        let previous = state.withLock { state -> State in
            let previous = state
            if case .running = state { state = .stopping }
            return previous
        }
        guard case let .running(listener, acceptThread, loops) = previous else { return }

        acceptWake.signal()
        pthread_join(acceptThread, nil)
        listener.close()

        forEachConnection { $0.requestShutdown(.graceful) }
        let deadline = MonotonicInstant.now().advanced(byNanoseconds: gracePeriodNanoseconds)
        if !waitForConnections(until: deadline) {
            logger.warning("grace period over; cancelling the calls still running")
            forEachConnection { $0.requestShutdown(.immediate) }
            _ = waitForConnections(until: .now().advanced(byNanoseconds: 5_000_000_000))
        }
        for loop in loops { loop.stop() }
        state.withLock { $0 = .stopped }
        logger.info("stopped", metadata: ["grpc.endpoint": "\(listener.endpoint)"])
    }

    public var openConnectionCount: Int { registry.withLock { $0.connections.count } }

    // MARK: - Threads

    private func acceptLoop(_ listener: ListeningSocket, loops: [EventLoop]) {
        while true {
            var fds = [
                pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: acceptWake.fd, events: Int16(POLLIN), revents: 0),
            ]
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                logger.error("accept loop stopped", metadata: ["error": "\(SystemCallError(call: "poll", errno: errno))"])
                return
            }
            if fds[1].revents != 0 { return }
            let fd = CLinux_accept4(listener.fd, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            if fd < 0 {
                switch errno {
                case EINTR, EAGAIN, EWOULDBLOCK, ECONNABORTED: continue
                default:
                    // Out of descriptors or memory: back off instead of spinning.
                    logger.warning("accept failed", metadata: ["error": "\(SystemCallError(call: "accept4", errno: errno))"])
                    usleep(50_000)
                    continue
                }
            }
            serve(fd, loops: loops)
        }
    }

    private func serve(_ fd: Int32, loops: [EventLoop]) {
        let id = registry.withLock { registry -> Int in
            registry.nextID += 1
            return registry.nextID
        }
        let connection = Connection(id: id, fd: fd, router: router, limits: limits, logger: logger, loop: loops[id % loops.count])
        registry.withLock { $0.connections[id] = connection }
        loops[id % loops.count].add(connection)
    }

    private func forEachConnection(_ body: (Connection) -> Void) {
        let connections = registry.withLock { Array($0.connections.values) }
        connections.forEach(body)
    }

    private func waitForConnections(until deadline: MonotonicInstant) -> Bool {
        while openConnectionCount > 0 {
            if MonotonicInstant.now() >= deadline { return false }
            usleep(5_000)
        }
        return true
    }
}
