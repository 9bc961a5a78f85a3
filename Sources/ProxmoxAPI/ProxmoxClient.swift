import FoundationEssentials
import TextSupport
import Synchronization

/// Waits; tests pass one that returns at once so polling costs nothing.
public protocol Sleeper: Sendable {
    func sleep(seconds: Double) async throws
}

public struct TaskSleeper: Sleeper {
    public init() {}
    public func sleep(seconds: Double) async throws {
        try await Task.sleep(nanoseconds: UInt64(max(0, seconds) * 1_000_000_000))
    }
}

/// How often and how patiently a failed request is sent again.
public struct RetryPolicy: Sendable {
    public var maxAttempts = 5
    public var baseDelay = 0.2
    public var maxDelay = 5.0

    public init(maxAttempts: Int = 5, baseDelay: Double = 0.2, maxDelay: Double = 5.0) {
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
    }

    /// Exponential backoff with full jitter.
    func delay(afterAttempt attempt: Int) -> Double {
        let ceiling = min(maxDelay, baseDelay * Double(1 << min(max(attempt - 1, 0), 30)))
        return Double.random(in: ceiling / 2...ceiling)
    }
}

/// Whether a request may be repeated after an ambiguous failure.
public enum Idempotency: Sendable {
    /// Reads, and writes that converge when repeated (set a key, delete a volume).
    case idempotent
    /// Allocations and the like: repeated only when the failure proves the
    /// first attempt did nothing.
    case notIdempotent
}

/// Told about every HTTP request a client made (metrics); must return quickly.
public protocol ProxmoxRequestObserver: Sendable {
    /// `path` is a template (`/nodes/{node}/qemu/{vmid}/config`), `status`
    /// nil when no answer came, `error` the classification of a failure.
    func requestFinished(method: String, path: String, status: Int?, error: ProxmoxError?, seconds: Double)
}

/// A Proxmox VE API client: authentication, the JSON envelope, one error
/// taxonomy, retries and task waits. Typed calls live in ProxmoxCalls.swift.
public final class ProxmoxClient: Sendable {
    private struct Ticket {
        var ticket: String
        var csrf: String
        var issuedAt: Double
    }

    public let endpoint: ClusterEndpoint
    private let transport: any HTTPTransport
    private let sleeper: any Sleeper
    private let retry: RetryPolicy
    private let now: @Sendable () -> Double
    private let ticket = Mutex<Ticket?>(nil)
    /// Called after every request the API answered: the controller's readiness.
    private let onAnswer: (@Sendable () -> Void)?
    private let observer: (any ProxmoxRequestObserver)?
    /// What each task type took lately: when to read a task's status.
    public let taskDurations = TaskDurations()

    /// Tickets live 2 h; renew well before.
    static let ticketRenewAfter = 3600.0

    public init(endpoint: ClusterEndpoint, transport: (any HTTPTransport)? = nil, sleeper: any Sleeper = TaskSleeper(),
                retry: RetryPolicy = RetryPolicy(), now: @escaping @Sendable () -> Double = { ProcessInfo.processInfo.systemUptime },
                onAnswer: (@Sendable () -> Void)? = nil, observer: (any ProxmoxRequestObserver)? = nil) {
        self.endpoint = endpoint
        self.observer = observer
        self.transport = transport ?? CurlTransport(options: endpoint.transport)
        self.sleeper = sleeper
        self.retry = retry
        self.now = now
        self.onAnswer = onAnswer
    }

    // MARK: - Requests

    /// Sends a request and returns the envelope's `data`. Errors are
    /// `ProxmoxError` (or `CancellationError`).
    public func call(_ method: String, _ path: String, _ parameters: [(String, String)] = [],
                     idempotency: Idempotency? = nil) async throws -> JSONValue {
        let idempotency = idempotency ?? (method == "GET" ? .idempotent : .notIdempotent)
        var attempt = 0
        var reauthenticated = false
        while true {
            attempt += 1
            do {
                return try await send(method, path, parameters)
            } catch let error as ProxmoxError {
                if case .authenticationFailed = error, case .password = endpoint.credentials, !reauthenticated {
                    // The ticket may have expired early (server restart): log in again once.
                    ticket.withLock { $0 = nil }
                    reauthenticated = true
                    attempt -= 1
                    continue
                }
                let retryable = idempotency == .idempotent ? error.isTransient : error.provesNothingHappened
                guard retryable, attempt < retry.maxAttempts else { throw error }
                try await sleeper.sleep(seconds: retry.delay(afterAttempt: attempt))
            }
        }
    }

    private func send(_ method: String, _ path: String, _ parameters: [(String, String)]) async throws -> JSONValue {
        var headers: [(String, String)] = [("Accept", "application/json")]
        switch endpoint.credentials {
        case let .apiToken(id, secret):
            headers.append(("Authorization", "PVEAPIToken=\(id)=\(secret)"))
        case .password:
            let session = try await currentTicket()
            headers.append(("Cookie", "PVEAuthCookie=\(FormEncoding.escape(session.ticket))"))
            if method != "GET" { headers.append(("CSRFPreventionToken", session.csrf)) }
        }
        var url = endpoint.apiBase + path
        var body: [UInt8]?
        let encoded = FormEncoding.encode(parameters)
        if method == "GET" || method == "DELETE" {
            if !encoded.isEmpty { url += "?" + encoded }
        } else {
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            body = Array(encoded.utf8)
        }
        let started = ProcessInfo.processInfo.systemUptime
        func observe(_ status: Int?, _ error: ProxmoxError?) {
            observer?.requestFinished(method: method, path: ProxmoxPath.template(path), status: status, error: error,
                                      seconds: ProcessInfo.processInfo.systemUptime - started)
        }
        let response: HTTPResponse
        do {
            response = try await transport.send(HTTPRequest(method: method, url: url, headers: headers, body: body,
                                                             timeout: endpoint.requestTimeout))
        } catch let error as TransportError {
            observe(nil, .transport(error))
            throw ProxmoxError.transport(error)
        }
        // Alive means answering as an API: not refusing us, not a proxy failure.
        if ![401, 403, 595, 596, 597].contains(response.status) { onAnswer?() }
        do {
            let data = try Self.interpret(response, path: path)
            observe(response.status, nil)
            return data
        } catch {
            observe(response.status, error)
            throw error
        }
    }

    /// The envelope's data, or the error the answer stands for.
    static func interpret(_ response: HTTPResponse, path: String) throws(ProxmoxError) -> JSONValue {
        let json = try? JSONValue.parse(response.body)
        if (200..<300).contains(response.status) {
            guard let json else { throw .malformedResponse("the body of a \(response.status) is not JSON") }
            return json["data"]
        }
        let bodyMessage = json?["message"].string?.trimmed()
        let message = response.reason.isEmpty ? (bodyMessage ?? "HTTP \(response.status)") : response.reason
        switch response.status {
        case 401:
            throw .authenticationFailed(reason: message)
        case 403:
            let (path, privilege) = parsePermission(message)
            throw .permissionDenied(path: path, privilege: privilege, message: message)
        case 400:
            if let errors = json?["errors"].object {
                throw .invalidParameters(errors.compactMapValues { $0.string?.trimmed() })
            }
            if message.contains("no such task") || message.contains("unable to parse worker upid") {
                throw .notFound(message)
            }
            throw .badRequest(message)
        case 595, 596, 597:
            throw .proxy(status: response.status, message: message)
        default:
            let detail = bodyMessage ?? message
            if let lock = detail.firstMatch(of: /VM is locked \(([^)]+)\)/).map({ String($0.1) }) {
                throw .vmLocked(vmid: vmid(inPath: path), lock: lock)
            }
            if isDigestMismatch(detail) {
                throw .digestConflict(message)
            }
            if detail.contains("can't lock file"), detail.contains("got timeout") {
                throw .configLockTimeout(message)
            }
            if response.status == 500, detail.contains("does not exist") || detail.contains("no such") {
                throw .notFound(message)
            }
            throw .server(status: response.status, message: message)
        }
    }

    // MARK: - Tickets

    private func currentTicket() async throws -> Ticket {
        guard case let .password(user, password) = endpoint.credentials else {
            throw ProxmoxError.badRequest("ticket requested without user credentials")
        }
        if let current = ticket.withLock({ $0 }), now() - current.issuedAt < Self.ticketRenewAfter {
            return current
        }
        // Renew with the old ticket while it is valid, else log in with the password.
        let secret = ticket.withLock { $0?.ticket } ?? password
        let fresh = try await login(user: user, secret: secret)
        ticket.withLock { $0 = fresh }
        return fresh
    }

    private func login(user: String, secret: String) async throws -> Ticket {
        let body = Array(FormEncoding.encode([("username", user), ("password", secret)]).utf8)
        let response: HTTPResponse
        do {
            response = try await transport.send(HTTPRequest(
                method: "POST", url: endpoint.apiBase + "/access/ticket",
                headers: [("Content-Type", "application/x-www-form-urlencoded")], body: body, timeout: endpoint.requestTimeout))
        } catch let error as TransportError {
            throw ProxmoxError.transport(error)
        }
        let data = try Self.interpret(response, path: "/access/ticket")
        guard let value = data["ticket"].string, let csrf = data["CSRFPreventionToken"].string else {
            throw ProxmoxError.malformedResponse("login answered without a ticket")
        }
        return Ticket(ticket: value, csrf: csrf, issuedAt: now())
    }

    /// qemu-server's words for a config changed since the digest was read
    /// (update_vm_api "checksum mismatch", guest-common "detected modified configuration").
    static func isDigestMismatch(_ text: String) -> Bool {
        text.contains("checksum mismatch") || text.contains("detected modified configuration")
    }

    // MARK: - Tasks

    /// Waits for a task: the first status read about when tasks of its type
    /// lately ended (at once for a type not seen yet, by one wait at a time:
    /// the others hold off until it learns the type), then quick reads
    /// backing off to at most `maxPollInterval` apart, up to `timeout`.
    /// `WARNINGS: N` counts as success. Returns the exit status.
    @discardableResult
    public func waitForTask(_ upid: String, timeout: Double = 600, maxPollInterval: Double = 2) async throws -> String {
        let node = UPID.node(of: upid)
        let type = UPID.type(of: upid)
        let path = "/nodes/\(FormEncoding.pathSegment(node))/tasks/\(FormEncoding.pathSegment(upid))/status"
        let started = now()
        let deadline = started + timeout
        var scouting = taskDurations.startScouting(type)
        defer { if scouting { taskDurations.endScouting(type) } }
        if !scouting {
            scouting = try await holdOff(type, started: started, limit: min(TaskDurations.longestFirstWait, timeout))
        }
        let basis = taskDurations.expectedSeconds(type)
        // What a task says about its type's length: the one learning it, or one whose first
        // wait came from what is known (not one that held off and then read at once).
        let teaches = scouting || basis != nil
        var wait = min(max(0, taskDurations.firstWait(type) - (now() - started)), max(0, deadline - now()))
        var interval = taskDurations.interval(type)
        var lastRunning: Double?
        while true {
            if wait > 0 { try await sleeper.sleep(seconds: wait) }
            let readAt = now() - started
            let status = try await call("GET", path)
            if status["status"].string == "stopped" {
                let exit = status["exitstatus"].string ?? "unknown"
                if exit == "OK" || exit.hasPrefix("WARNINGS") {
                    // A failed task (a lock, a bad option) may end at once: no measure of the type.
                    if teaches { taskDurations.record(type, elapsed: now() - started, lastRunning: lastRunning, basis: basis) }
                    return exit
                }
                // update_vm_api checks the digest again in its worker, under the
                // VM's lock: a change made after the call was accepted fails the
                // task, and the caller decides again as on an early mismatch.
                if Self.isDigestMismatch(exit) { throw ProxmoxError.digestConflict(exit) }
                throw ProxmoxError.taskFailed(upid: upid, exitStatus: exit)
            }
            lastRunning = readAt
            if scouting {
                wait = Self.scoutInterval(after: wait, age: readAt, cap: maxPollInterval)
            } else {
                (wait, interval) = (interval, min(interval * 2, maxPollInterval))
            }
            if now() + wait > deadline { throw ProxmoxError.taskTimedOut(upid: upid) }
        }
    }

    /// While another wait learns how long tasks of a new `type` take, this one
    /// reads nothing, up to `limit` seconds from its task's start (its task may
    /// be the quicker one). Returns true when it is to learn the type itself:
    /// the wait that was learning it gave up without seeing its task end.
    private func holdOff(_ type: String, started: Double, limit: Double) async throws -> Bool {
        while taskDurations.expectedSeconds(type) == nil, now() - started < limit {
            // Another follower may take over first: then go on holding off.
            if !taskDurations.isBeingScouted(type), taskDurations.startScouting(type) { return true }
            try await sleeper.sleep(seconds: Self.holdOffTick)
        }
        return false
    }

    /// The reads of the one task a new type is learned from: doubling from
    /// 0.05 s to 0.25 s, then a quarter of the task's age apart, so its end
    /// is known to within a quarter: the first wait of the tasks after it is
    /// the middle of that span, and doubling reads (three seconds of task
    /// seen done two seconds late) made it up to a second too long.
    static func scoutInterval(after wait: Double, age: Double, cap: Double) -> Double {
        min(max(min(max(wait * 2, 0.05), 0.25), age / 4), cap)
    }

    /// How often a wait holding off looks whether the type became known (no request: a lock and a lookup).
    static let holdOffTick = 0.05

    /// For calls answering a UPID, or null when already done.
    func finish(_ data: JSONValue, timeout: Double = 600) async throws {
        if let upid = data.string, upid.hasPrefix("UPID:") {
            try await waitForTask(upid, timeout: timeout)
        }
    }
}

/// "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)"
private func parsePermission(_ message: String) -> (String?, String?) {
    guard let inside = message.firstMatch(of: /\(([^)]*)\)/)?.1 else { return (nil, nil) }
    let parts = inside.split(separator: ",", maxSplits: 1).map { $0.trimmed() }
    guard parts.count == 2, parts[0].hasPrefix("/") else { return (nil, nil) }
    return (parts[0], parts[1])
}

private func vmid(inPath path: String) -> Int? {
    path.firstMatch(of: /\/qemu\/(\d+)/).flatMap { Int($0.1) }
}
