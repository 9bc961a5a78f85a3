#if canImport(Glibc)
import Glibc
#endif
import BlockDevice
import CLinux
import Logging

/// One long-running part of the process: the gRPC server, the metrics
/// endpoint, the readiness prober.
public protocol DriverService: Sendable {
    var name: String { get }
    /// Starts serving; throws when it cannot (the group then stops what already started).
    func start() throws
    /// Stops, giving in-flight work up to `gracePeriod` seconds; returns once stopped.
    func stop(gracePeriod: Double) async
}

/// Runs the process's services as one structured unit, the way
/// swift-service-lifecycle's ServiceGroup does: start them in order, wait
/// for a shutdown signal, stop them in reverse order (the gRPC server first
/// stops taking calls and lets its in-flight ones finish; what it depends on
/// stops after it). A signal's handler only writes its number to a pipe that
/// a thread of the group's own reads. Not sigwait with the signals blocked:
/// under an async main on Linux the code does not run on the main thread, and
/// Dispatch's workers do not all inherit a mask set there, so a thread that
/// never blocked SIGTERM would take it and die with the default action.
public struct ServiceGroup: Sendable {
    public let services: [any DriverService]
    public let signals: [Int32]
    public let gracePeriod: Double
    public let logger: Logger

    public init(services: [any DriverService], signals: [Int32] = [SIGTERM, SIGINT], gracePeriod: Double, logger: Logger) {
        self.services = services
        self.signals = signals
        self.gracePeriod = gracePeriod
        self.logger = logger
    }

    /// Starts every service, serves until a signal comes, then stops them; returns the signal.
    public func run() async throws -> Int32 {
        let signalPipe = signals.withUnsafeBufferPointer { CLinux_signal_pipe($0.baseAddress, Int32($0.count)) }
        guard signalPipe >= 0 else { throw SignalSetupFailed(errno: errno) }
        return try await run(until: { await Self.nextSignal(from: signalPipe) })
    }

    /// Starts every service, serves until `shutdown` answers a signal number, then stops them.
    func run(until shutdown: @Sendable () async -> Int32) async throws -> Int32 {
        var started: [any DriverService] = []
        do {
            for service in services {
                try service.start()
                started.append(service)
            }
        } catch {
            await stop(started)
            throw error
        }
        let received = await shutdown()
        logger.info("shutting down", metadata: ["signal": "\(received == SIGTERM ? "SIGTERM" : received == SIGINT ? "SIGINT" : "\(received)")"])
        await stop(started)
        return received
    }

    private func stop(_ started: [any DriverService]) async {
        for service in started.reversed() { await service.stop(gracePeriod: gracePeriod) }
    }

    /// The next signal number the handler writes to the pipe.
    static func nextSignal(from pipe: Int32) async -> Int32 {
        await OwnedThread.run { () -> Int32 in
            var byte: UInt8 = 0
            while true {
                let count = read(pipe, &byte, 1)
                if count == 1 { return Int32(byte) }
                if count < 0, errno == EINTR { continue }
                return SIGTERM  // the pipe broke: stop as if asked to
            }
        }
    }
}

struct SignalSetupFailed: Error, CustomStringConvertible {
    let errno: Int32
    var description: String { "cannot install the shutdown signal handlers: \(String(cString: strerror(errno)))" }
}
