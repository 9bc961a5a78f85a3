/// The error a handler throws to end a call with a status other than OK.
///
/// `message` goes to the client in `grpc-message`, so it must say what failed
/// and what to do, and must never carry a secret. `cause` stays on the server
/// (it reaches the log line, not the wire).
public struct RPCError: Error, Sendable, CustomStringConvertible {
    public var code: StatusCode
    public var message: String
    public var cause: (any Error)?

    public init(_ code: StatusCode, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String { "\(code): \(message)" }
}

/// Domain errors conform to this to choose their own status, in one place,
/// instead of every handler mapping them by hand.
public protocol RPCErrorConvertible: Error {
    var rpcError: RPCError { get }
}

extension RPCError {
    /// Any error as the status a client should see. An error nobody mapped
    /// becomes INTERNAL with a generic message: its details (which may name
    /// paths, hosts or internals) go only to the call's log line, as the cause;
    /// cancellation becomes CANCELLED or,
    /// when the call's deadline has passed, DEADLINE_EXCEEDED.
    public init(from error: any Error, deadlinePassed: Bool = false) {
        switch error {
        case let error as RPCError:
            self = error
        case let error as any RPCErrorConvertible:
            self = error.rpcError
        case is CancellationError:
            self = deadlinePassed
                ? RPCError(.deadlineExceeded, "deadline exceeded before the call finished")
                : RPCError(.cancelled, "the call was cancelled by the client")
        default:
            self = RPCError(.internal, "internal error (the driver's log has the details)", cause: error)
        }
    }
}
