import Logging
import SwiftProtobuf

/// What a handler knows about its call.
public struct CallContext: Sendable {
    /// The full method path, e.g. `/csi.v1.Identity/Probe`.
    public let method: String
    /// When the client gives up (from `grpc-timeout`), if it said.
    public let deadline: MonotonicInstant?
    /// Carries `grpc.method` metadata; handlers add their own keys.
    public var logger: Logger

    public init(method: String, deadline: MonotonicInstant?, logger: Logger) {
        self.method = method
        self.deadline = deadline
        self.logger = logger
    }

    public var deadlinePassed: Bool {
        guard let deadline else { return false }
        return MonotonicInstant.now() >= deadline
    }
}

/// A request type that holds secrets conforms to this so the call log can
/// print it with every secret value replaced.
public protocol LogRedactable {
    func redactedForLog() -> Self
}

/// Told about every finished call (metrics); must return quickly.
public protocol CallObserver: Sendable {
    func callFinished(method: String, code: StatusCode, seconds: Double)
}

/// What a handler on the event loop answers: the response now, or the work
/// that needs an await (a Proxmox lookup), run as a task preferring the loop.
public enum Answer<Response: Sendable>: Sendable {
    case now(Response)
    case later(@Sendable () async throws -> Response)

    /// The response, awaiting the work when there is some (tests, `Router.handle`).
    public func value() async throws -> Response {
        switch self {
        case let .now(response): response
        case let .later(work): try await work()
        }
    }
}

/// Maps method paths to handlers. Handlers are plain async functions, so the
/// services can be exercised with no socket at all (`Router.handle`).
public struct Router: Sendable {
    public typealias RawHandler = @Sendable ([UInt8], CallContext) async -> Result<[UInt8], RPCError>
    /// A handler the loop runs as the request arrives: its result, or the rest to await.
    public typealias ImmediateHandler = @Sendable ([UInt8], CallContext) -> ImmediateOutcome

    public enum ImmediateOutcome: Sendable {
        case done(Result<[UInt8], RPCError>)
        case later(@Sendable () async -> Result<[UInt8], RPCError>)
    }

    private var handlers: [String: RawHandler] = [:]
    private var immediateHandlers: [String: ImmediateHandler] = [:]
    private let observer: (any CallObserver)?

    public init(observer: (any CallObserver)? = nil) {
        self.observer = observer
    }

    /// Registers a unary method. Decoding, encoding and the per-call log
    /// line are done here, once for every method.
    public mutating func register<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        _ path: String,
        _ handler: @escaping @Sendable (Request, CallContext) async throws -> Response
    ) {
        precondition(handlers[path] == nil, "method \(path) registered twice")
        let observer = observer
        handlers[path] = { bytes, context in
            let started = MonotonicInstant.now()
            let request: Request
            switch Self.decode(Request.self, bytes) {
            case let .success(decoded): request = decoded
            case let .failure(error): return Self.finish(path, observer, context, started, .failure(error), request: nil)
            }
            let result: Result<[UInt8], RPCError>
            do {
                result = .success(try await handler(request, context).serializedBytes())
            } catch {
                result = Self.failure(error, context)
            }
            return Self.finish(path, observer, context, started, result, request: request)
        }
    }

    /// Registers a method whose handler only computes from memory: it never
    /// blocks, waits or does I/O. The server runs it on the connection's event
    /// loop as the request arrives, with no task and no thread hop (Probe,
    /// which liveness probes call every few seconds, and the capability calls).
    public mutating func registerImmediate<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        _ path: String,
        _ handler: @escaping @Sendable (Request, CallContext) throws -> Response
    ) {
        registerOnLoop(path) { request, context in .now(try handler(request, context)) }
    }

    /// Registers a unary method whose handler does only quick local system
    /// calls (stat, statvfs, sysfs and mountinfo reads) and answers at once
    /// when it can: it runs on the connection's event loop as the request
    /// arrives (NodeGetVolumeStats, which kubelet calls for every volume every
    /// minute). When the answer needs an await, the handler returns it as
    /// `.later`, and that runs as a task preferring the loop: no hop to Swift's
    /// pool. While either runs, the loop's other connections wait, so nothing
    /// that can take long (mkfs, mount, a lock another call holds) may go here.
    public mutating func registerOnLoop<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        _ path: String,
        _ handler: @escaping @Sendable (Request, CallContext) throws -> Answer<Response>
    ) {
        precondition(handlers[path] == nil, "method \(path) registered twice")
        let observer = observer
        let run: ImmediateHandler = { bytes, context in
            let started = MonotonicInstant.now()
            func done(_ result: Result<[UInt8], RPCError>, _ request: Request?) -> ImmediateOutcome {
                .done(Self.finish(path, observer, context, started, Self.onTime(result, context), request: request))
            }
            let request: Request
            switch Self.decode(Request.self, bytes) {
            case let .success(decoded): request = decoded
            case let .failure(error): return done(.failure(error), nil)
            }
            let answer: Answer<Response>
            do {
                answer = try handler(request, context)
            } catch {
                return done(Self.failure(error, context), request)
            }
            switch answer {
            case let .now(response):
                do { return done(.success(try response.serializedBytes()), request) } catch { return done(Self.failure(error, context), request) }
            case let .later(work):
                return .later {
                    let result: Result<[UInt8], RPCError>
                    do { result = .success(try await work().serializedBytes()) } catch { result = Self.failure(error, context) }
                    return Self.finish(path, observer, context, started, result, request: request)
                }
            }
        }
        immediateHandlers[path] = run
        handlers[path] = { bytes, context in
            switch run(bytes, context) {
            case let .done(result): result
            case let .later(work): await work()
            }
        }
    }

    private static func failure(_ error: any Error, _ context: CallContext) -> Result<[UInt8], RPCError> {
        .failure(RPCError(from: error, deadlinePassed: context.deadlinePassed))
    }

    /// An answer ready only after the call's deadline is DEADLINE_EXCEEDED, as a
    /// task's would be; decided before the log line, so it says what the client got.
    private static func onTime(_ result: Result<[UInt8], RPCError>, _ context: CallContext) -> Result<[UInt8], RPCError> {
        context.deadlinePassed ? .failure(RPCError(.deadlineExceeded, "deadline exceeded before the call finished")) : result
    }

    private static func decode<Request: SwiftProtobuf.Message>(_: Request.Type, _ bytes: [UInt8]) -> Result<Request, RPCError> {
        do {
            return .success(try Request(serializedBytes: bytes))
        } catch {
            return .failure(RPCError(.internal, "grpc: error unmarshalling request: \(error)"))
        }
    }

    /// The call's log line and its report to the observer.
    private static func finish(_ path: String, _ observer: (any CallObserver)?, _ context: CallContext, _ started: MonotonicInstant,
                               _ result: Result<[UInt8], RPCError>, request: (any SwiftProtobuf.Message)?) -> Result<[UInt8], RPCError> {
        CallLog.record(context: context, started: started, result: result, request: request)
        if let observer {
            let code: StatusCode = switch result {
            case .success: .ok
            case let .failure(error): error.code
            }
            observer.callFinished(method: path, code: code, seconds: started.seconds(until: .now()))
        }
        return result
    }

    /// The handler to run inline for `path`, when it was registered immediate or on the loop.
    public func immediateHandler(for path: String) -> ImmediateHandler? { immediateHandlers[path] }

    public func handler(for path: String) -> RawHandler? { handlers[path] }

    public var paths: Set<String> { Set(handlers.keys) }

    /// Runs one call the way the server does, minus the transport.
    public func handle(path: String, message: [UInt8], context: CallContext) async -> Result<[UInt8], RPCError> {
        guard let handler = handlers[path] else {
            return .failure(unknownMethodError(path))
        }
        return await handler(message, context)
    }

    /// The UNIMPLEMENTED status grpc-go gives, naming the service or method.
    func unknownMethodError(_ path: String) -> RPCError {
        let trimmed = path.hasPrefix("/") ? path.dropFirst() : path[...]
        guard let slash = trimmed.lastIndex(of: "/") else {
            return RPCError(.unimplemented, "malformed method name: \"\(path)\"")
        }
        let service = trimmed[..<slash]
        let method = trimmed[trimmed.index(after: slash)...]
        let serviceKnown = handlers.keys.contains { $0.hasPrefix("/\(service)/") }
        return serviceKnown
            ? RPCError(.unimplemented, "unknown method \(method) for service \(service)")
            : RPCError(.unimplemented, "unknown service \(service)")
    }
}

/// The one structured log line each call gets.
enum CallLog {
    static func record(
        context: CallContext, started: MonotonicInstant,
        result: Result<[UInt8], RPCError>, request: (any SwiftProtobuf.Message)?
    ) {
        let level: Logger.Level = switch result {
        case .success: .info
        case let .failure(error): error.code == .internal || error.code == .unknown ? .error : .info
        }
        // A line the log level drops is not built (Probe every few seconds, at `warning`).
        guard context.logger.logLevel <= level else { return }
        let elapsed = started.nanoseconds(until: .now())
        var metadata: Logger.Metadata = [
            "grpc.method": "\(context.method)",
            "grpc.duration_ms": "\(Double(elapsed / 1_000) / 1_000)",
        ]
        switch result {
        case .success:
            metadata["grpc.code"] = "OK"
        case let .failure(error):
            metadata["grpc.code"] = "\(error.code)"
            metadata["grpc.message"] = "\(error.message)"
            if let cause = error.cause { metadata["grpc.cause"] = "\(cause)" }
        }
        // Request bodies only at debug level, and never with secret values.
        if context.logger.logLevel <= .debug, let request {
            let printable = (request as? any LogRedactable)?.redactedForLog() as? any SwiftProtobuf.Message ?? request
            let text = printable.textFormatString().replacingNewlines()
            if !text.isEmpty { metadata["grpc.request"] = "\(text)" }
        }
        context.logger.log(level: level, "rpc", metadata: metadata)
    }
}

extension String {
    fileprivate func replacingNewlines() -> String {
        split(separator: "\n", omittingEmptySubsequences: true).joined(separator: " ")
    }
}
