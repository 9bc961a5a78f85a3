import ProxmoxAPI
import ProxmoxDomain
import UnaryGRPC

/// Proxmox and domain errors as CSI status codes, decided here and nowhere
/// else. `what` says which operation on which object, so every message names it.
func rpcError(_ error: any Error, _ what: String) -> RPCError {
    if let error = error as? RPCError { return error }
    if error is CancellationError { return RPCError(.cancelled, "\(what): cancelled") }
    if let error = error as? DomainError { return RPCError(error.rpcError.code, "\(what): \(error)", cause: error) }
    guard let error = error as? ProxmoxError else {
        // Nobody mapped it: the client hears which operation failed, the log line gets the cause.
        return RPCError(.internal, "\(what): internal error (the driver's log has the details)", cause: error)
    }
    let message = "\(what): \(error)"
    switch error {
    case .notFound: return RPCError(.notFound, message, cause: error)
    case .permissionDenied: return RPCError(.permissionDenied, message, cause: error)
    case .authenticationFailed: return RPCError(.unauthenticated, message, cause: error)
    // Another operation holds the VM: the sidecar's retry will succeed.
    case .vmLocked, .configLockTimeout, .digestConflict: return RPCError(.aborted, message, cause: error)
    case .proxy, .transport, .taskTimedOut: return RPCError(.unavailable, message, cause: error)
    case .invalidParameters, .badRequest: return RPCError(.invalidArgument, message, cause: error)
    case .taskFailed, .server, .malformedResponse: return RPCError(.internal, message, cause: error)
    }
}

/// A domain error that reaches the gRPC layer without an operation's context still gets its code.
extension DomainError: RPCErrorConvertible {
    package var rpcError: RPCError {
        let code: StatusCode = switch self {
        case .notFound: .notFound
        case .conflict: .failedPrecondition
        case .busy: .aborted
        case .notYet: .unavailable
        case .exists: .alreadyExists
        case .exhausted: .resourceExhausted
        case .inconsistent: .internal
        }
        return RPCError(code, description, cause: self)
    }
}
