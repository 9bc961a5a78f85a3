import CCurl
import CLinux
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import TextSupport

/// HTTP over libcurl's multi interface, driven by one thread of its own.
///
/// Requests from any task are queued and the thread is woken; it adds them
/// to the multi handle, runs transfers, and resumes each caller when its
/// transfer ends. Nothing blocks Swift's cooperative pool, connections are
/// kept alive and reused, and hundreds of requests can be in flight at once.
/// HTTP/1.1 is forced: Proxmox puts its error messages in the status line's
/// reason phrase, which HTTP/2 does not have.
public final class CurlTransport: HTTPTransport, @unchecked Sendable {
    private final class Job {
        let id: Int
        let request: HTTPRequest
        let continuation: CheckedContinuation<HTTPResponse, any Error>
        var body: [UInt8] = []
        var reason = ""
        var headerList: UnsafeMutablePointer<curl_slist>?
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)

        init(id: Int, request: HTTPRequest, continuation: CheckedContinuation<HTTPResponse, any Error>) {
            self.id = id
            self.request = request
            self.continuation = continuation
            errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        }

        deinit {
            CCurl_slist_free_all(headerList)
            errorBuffer.deallocate()
        }
    }

    private struct Inbox {
        var newJobs: [Job] = []
        var cancelled: [Int] = []
        var nextID = 0
        var stopping = false
        /// Set at the first request, when libcurl is loaded and the transfer thread starts.
        var engine: Engine = .notStarted
    }

    private enum Engine {
        case notStarted
        case running(multi: UnsafeMutableRawPointer)
        case unavailable(String)
    }

    private let options: TransportOptions
    private let inbox = Mutex(Inbox())
    /// The multi handle, for the transfer thread (set before it starts, never changed).
    private nonisolated(unsafe) var multi: UnsafeMutableRawPointer!
    // Owned by the transfer thread.
    private var active: [UnsafeMutableRawPointer: Job] = [:]
    private var idleHandles: [UnsafeMutableRawPointer] = []
    private let stopped = DispatchSemaphore(value: 0)

    static let maxConnectionsPerHost = 48

    /// Loads nothing yet: libcurl is loaded, and the transfer thread started, at the first request.
    public init(options: TransportOptions = TransportOptions()) {
        self.options = options
    }

    deinit {
        if let multi { _ = CCurl_multi_cleanup(multi) }
    }

    /// Under the inbox lock: the running engine's multi handle, starting it if need be.
    private func engine(_ inbox: inout Inbox) -> Result<UnsafeMutableRawPointer, TransportError> {
        switch inbox.engine {
        case let .running(multi): return .success(multi)
        case let .unavailable(reason): return .failure(.other(reason))
        case .notStarted:
            var error = [CChar](repeating: 0, count: 512)
            guard CCurl_load(&error, error.count) == 0 else {
                let reason = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                inbox.engine = .unavailable(reason)
                return .failure(.other(reason))
            }
            _ = CCurl_global_init(Int(CURL_GLOBAL_DEFAULT))
            let multi = CCurl_multi_init()!
            _ = CCurl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, 64)
            // pveproxy serves from a few worker processes: past a few dozen connections
            // requests only wait at the server, and a flood of new connections overruns
            // its listen queue. Beyond this many, requests wait here for a free connection.
            _ = CCurl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, Self.maxConnectionsPerHost)
            self.multi = multi
            inbox.engine = .running(multi: multi)
            startTransferThread { [self] in run() }
            return .success(multi)
        }
    }

    /// Stops the transfer thread after failing what is still queued.
    public func shutdown() {
        let multi = inbox.withLock { inbox -> UnsafeMutableRawPointer? in
            inbox.stopping = true
            if case let .running(multi) = inbox.engine { return multi }
            return nil
        }
        guard let multi else { return }
        _ = CCurl_multi_wakeup(multi)
        stopped.wait()
    }

    public func send(_ request: HTTPRequest) async throws -> HTTPResponse {
        let id = inbox.withLock { inbox -> Int in
            inbox.nextID += 1
            return inbox.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let accepted = inbox.withLock { inbox -> Result<UnsafeMutableRawPointer, TransportError> in
                    guard !inbox.stopping else { return .failure(.other("the HTTP client has been shut down")) }
                    let engine = engine(&inbox)
                    if case .success = engine { inbox.newJobs.append(Job(id: id, request: request, continuation: continuation)) }
                    return engine
                }
                switch accepted {
                case let .success(multi): _ = CCurl_multi_wakeup(multi)
                case let .failure(error): continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            let multi = inbox.withLock { inbox -> UnsafeMutableRawPointer? in
                inbox.cancelled.append(id)
                if case let .running(multi) = inbox.engine { return multi }
                return nil
            }
            if let multi { _ = CCurl_multi_wakeup(multi) }
        }
    }

    // MARK: - The transfer thread

    private func run() {
        while true {
            let (jobs, cancelled, stopping) = inbox.withLock { inbox in
                defer {
                    inbox.newJobs.removeAll()
                    inbox.cancelled.removeAll()
                }
                return (inbox.newJobs, inbox.cancelled, inbox.stopping)
            }
            for job in jobs { start(job) }
            for id in cancelled {
                if let (handle, job) = active.first(where: { $0.value.id == id }) {
                    finish(handle, job, .failure(CancellationError()))
                }
            }
            if stopping {
                for (handle, job) in active {
                    finish(handle, job, .failure(TransportError.other("the HTTP client has been shut down")))
                }
                idleHandles.forEach { CCurl_easy_cleanup($0) }
                stopped.signal()
                return
            }
            var running: Int32 = 0
            CCurl_multi_perform(multi, &running)
            var remaining: Int32 = 0
            while let message = CCurl_multi_info_read(multi, &remaining) {
                guard message.pointee.msg == CURLMSG_DONE, let handle = message.pointee.easy_handle,
                      let job = active[handle] else { continue }
                let code = message.pointee.data.result
                finish(handle, job, code == CURLE_OK ? .success(response(handle, job)) : .failure(transportError(code, job)))
            }
            CCurl_multi_poll(multi, nil, 0, 1000, nil)
        }
    }

    private func start(_ job: Job) {
        let handle = idleHandles.popLast() ?? CCurl_easy_init()!
        CCurl_easy_reset(handle)
        let request = job.request
        let user = Unmanaged.passUnretained(job).toOpaque()
        _ = CCurl_easy_setopt_string(handle, CURLOPT_URL, request.url)
        _ = CCurl_easy_setopt_long(handle, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1))
        _ = CCurl_easy_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        _ = CCurl_easy_setopt_long(handle, CURLOPT_TIMEOUT_MS, Int(request.timeout * 1000))
        _ = CCurl_easy_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, Int(options.connectTimeout * 1000))
        _ = CCurl_easy_setopt_pointer(handle, CURLOPT_ERRORBUFFER, job.errorBuffer)
        _ = CCurl_easy_setopt_write_callback(handle) { data, size, count, user in
            let job = Unmanaged<Job>.fromOpaque(user!).takeUnretainedValue()
            let length = size * count
            data!.withMemoryRebound(to: UInt8.self, capacity: length) {
                job.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: length))
            }
            return length
        }
        _ = CCurl_easy_setopt_pointer(handle, CURLOPT_WRITEDATA, user)
        _ = CCurl_easy_setopt_header_callback(handle) { data, size, count, user in
            let job = Unmanaged<Job>.fromOpaque(user!).takeUnretainedValue()
            let length = size * count
            let line = data!.withMemoryRebound(to: UInt8.self, capacity: length) {
                String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self)
            }
            // "HTTP/1.1 500 VM is locked (backup)": keep the reason phrase.
            if line.hasPrefix("HTTP/") {
                let parts = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
                    .map { $0.trimmed() }
                job.reason = parts.count == 3 ? String(parts[2]) : ""
            }
            return length
        }
        _ = CCurl_easy_setopt_pointer(handle, CURLOPT_HEADERDATA, user)

        var headers: UnsafeMutablePointer<curl_slist>? = CCurl_slist_append(nil, "Expect:")
        for (name, value) in request.headers {
            headers = CCurl_slist_append(headers, "\(name): \(value)")
        }
        job.headerList = headers
        _ = CCurl_easy_setopt_slist(handle, CURLOPT_HTTPHEADER, headers)

        switch request.method {
        case "GET":
            _ = CCurl_easy_setopt_long(handle, CURLOPT_HTTPGET, 1)
        case "DELETE":
            _ = CCurl_easy_setopt_string(handle, CURLOPT_CUSTOMREQUEST, "DELETE")
        default:
            if request.method != "POST" {
                _ = CCurl_easy_setopt_string(handle, CURLOPT_CUSTOMREQUEST, request.method)
            }
            let body = request.body ?? []
            _ = CCurl_easy_setopt_long(handle, CURLOPT_POSTFIELDSIZE, body.count)
            // COPYPOSTFIELDS: libcurl keeps its own copy of the body.
            body.withUnsafeBufferPointer { bytes in
                var empty: UInt8 = 0
                let pointer = bytes.baseAddress.map { UnsafeMutableRawPointer(mutating: $0) }
                    ?? withUnsafeMutablePointer(to: &empty) { UnsafeMutableRawPointer($0) }
                _ = CCurl_easy_setopt_pointer(handle, CURLOPT_COPYPOSTFIELDS, pointer)
            }
        }

        if let caFile = options.caFile {
            _ = CCurl_easy_setopt_string(handle, CURLOPT_CAINFO, caFile)
        }
        if options.insecureSkipVerify {
            _ = CCurl_easy_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 0)
            _ = CCurl_easy_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 0)
        }
        active[handle] = job
        CCurl_multi_add_handle(multi, handle)
    }

    private func response(_ handle: UnsafeMutableRawPointer, _ job: Job) -> HTTPResponse {
        var status = 0
        _ = CCurl_easy_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, reason: job.reason, body: job.body)
    }

    private func finish(_ handle: UnsafeMutableRawPointer, _ job: Job, _ result: Result<HTTPResponse, any Error>) {
        CCurl_multi_remove_handle(multi, handle)
        active[handle] = nil
        idleHandles.append(handle)
        job.continuation.resume(with: result)
    }

    private func transportError(_ code: CURLcode, _ job: Job) -> TransportError {
        let detail = job.errorBuffer.pointee != 0
            ? String(cString: job.errorBuffer)
            : String(cString: CCurl_easy_strerror(code))
        switch code {
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY: return .cannotResolve(detail)
        case CURLE_COULDNT_CONNECT: return .cannotConnect(detail)
        case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE: return .tlsVerification(detail)
        case CURLE_SSL_CONNECT_ERROR, CURLE_SSL_CERTPROBLEM: return .tls(detail)
        case CURLE_OPERATION_TIMEDOUT: return .timedOut(detail)
        case CURLE_GOT_NOTHING, CURLE_SEND_ERROR, CURLE_RECV_ERROR, CURLE_PARTIAL_FILE: return .connectionLost(detail)
        default: return .other(detail)
        }
    }
}

/// The transfer loop's detached thread (named for `top -H` and core dumps).
private func startTransferThread(_ body: @escaping @Sendable () -> Void) {
    final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    guard pthread_create(&thread, nil, { raw in
        Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, box) == 0 else {
        // Without its thread the transport can do nothing; say so at once.
        fatalError("cannot start the Proxmox HTTP thread: \(errno)")
    }
    pthread_detach(thread)
    _ = CLinux_pthread_setname(thread, "proxmox-http")
}

