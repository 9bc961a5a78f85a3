import CNGHTTP2
import Logging

/// A request whose message has fully arrived and that a handler should run.
struct IncomingCall {
    let streamID: Int32
    let path: String
    let deadline: MonotonicInstant?
    let message: [UInt8]
}

/// Limits a server applies to every connection.
public struct ServerLimits: Sendable {
    /// Largest request message accepted (grpc-go's default is 4 MiB).
    public var maxRequestMessageBytes = 4 * 1024 * 1024
    /// Streams a client may have open at once on one connection.
    public var maxConcurrentStreams: UInt32 = 1024
    /// Flow-control windows: large enough that a 4 MiB message needs no round trips.
    public var streamWindowBytes: Int32 = 1 << 20
    public var connectionWindowBytes: Int32 = 16 << 20

    public init() {}
}

/// One server-side HTTP/2 session speaking unary gRPC, driven entirely
/// through nghttp2's memory API: bytes in (`receive`), bytes out
/// (`drainOutput`). It does no I/O and is not thread-safe; the connection's
/// I/O thread owns it. Completed requests queue up in `readyCalls`; requests
/// that cannot run (unknown method, bad framing, wrong content-type) are
/// answered here and never reach a handler.
final class HTTP2ServerSession {
    private final class Stream {
        var path = ""
        var method = ""
        var contentType = ""
        var encoding = ""
        var timeoutHeader: [UInt8]?
        var deadline: MonotonicInstant?
        var reader: UnaryRequestReader
        /// A response (or trailers-only error) has been submitted.
        var answered = false
        /// Handed to a handler; its close must cancel that handler.
        var dispatched = false
        var outgoing: [UInt8] = []
        var outgoingOffset = 0
        let openedAt: MonotonicInstant

        init(maxMessageBytes: Int, openedAt: MonotonicInstant) {
            reader = UnaryRequestReader(maxMessageBytes: maxMessageBytes)
            self.openedAt = openedAt
        }
    }

    private var session: OpaquePointer?
    private var streams: [Int32: Stream] = [:]
    private var streamsWithDeadline = 0
    private let router: Router
    private let limits: ServerLimits
    private let logger: Logger

    /// Requests ready for a handler, in arrival order; the owner drains them.
    private(set) var readyCalls: [IncomingCall] = []
    /// Dispatched streams that closed (finished, reset or timed out).
    private(set) var closedDispatchedStreams: [Int32] = []
    private(set) var goAwaySent = false

    init(router: Router, limits: ServerLimits, logger: Logger) {
        self.router = router
        self.limits = limits
        self.logger = logger

        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, user in
            HTTP2ServerSession.from(user).beginHeaders(frame!)
        }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, user in
            HTTP2ServerSession.from(user).header(
                frame!, name: UnsafeBufferPointer(start: name, count: nameLength),
                value: UnsafeBufferPointer(start: value, count: valueLength))
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, user in
            HTTP2ServerSession.from(user).frameReceived(frame!)
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, streamID, data, length, user in
            HTTP2ServerSession.from(user).dataReceived(streamID, UnsafeRawBufferPointer(start: data, count: length))
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamID, _, user in
            HTTP2ServerSession.from(user).streamClosed(streamID)
        }

        // nghttp2 keeps closed streams for RFC 7540 priority, up to
        // MAX_CONCURRENT_STREAMS of them per connection (~200 KiB a busy
        // connection: 40 MiB over 100); a unary server schedules no
        // priorities, so it keeps none.
        var options: OpaquePointer?
        nghttp2_option_new(&options)
        defer { nghttp2_option_del(options) }
        nghttp2_option_set_no_closed_streams(options, 1)
        nghttp2_session_server_new2(&session, callbacks, Unmanaged.passUnretained(self).toOpaque(), options)

        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
                                   value: limits.maxConcurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue),
                                   value: UInt32(limits.streamWindowBytes)),
        ]
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, limits.connectionWindowBytes)
    }

    deinit {
        nghttp2_session_del(session)
    }

    private static func from(_ user: UnsafeMutableRawPointer?) -> HTTP2ServerSession {
        Unmanaged<HTTP2ServerSession>.fromOpaque(user!).takeUnretainedValue()
    }

    // MARK: - Bytes in, bytes out

    enum ProtocolError: Error, CustomStringConvertible {
        case nghttp2(Int)
        var description: String {
            switch self {
            case let .nghttp2(code): "HTTP/2 protocol error: \(String(cString: nghttp2_strerror(Int32(code))))"
            }
        }
    }

    /// Feeds bytes read from the peer. Throws on a fatal protocol error; the
    /// session has then queued a GOAWAY, which `drainOutput` still returns.
    func receive(_ bytes: UnsafeRawBufferPointer) throws(ProtocolError) {
        guard let base = bytes.baseAddress else { return }
        let consumed = nghttp2_session_mem_recv(session, base.assumingMemoryBound(to: UInt8.self), bytes.count)
        if consumed < 0 { throw .nghttp2(consumed) }
    }

    /// Appends everything the session wants to send to `buffer`.
    func drainOutput(into buffer: inout [UInt8]) {
        while true {
            var chunk: UnsafePointer<UInt8>?
            let length = nghttp2_session_mem_send(session, &chunk)
            guard length > 0, let chunk else { return }
            buffer.append(contentsOf: UnsafeBufferPointer(start: chunk, count: length))
        }
    }

    /// False once the session has nothing left to do (after GOAWAY, with no
    /// open streams, or after a fatal error).
    var isAlive: Bool {
        nghttp2_session_want_read(session) != 0 || nghttp2_session_want_write(session) != 0
    }

    func takeReadyCalls() -> [IncomingCall] {
        defer { readyCalls.removeAll(keepingCapacity: true) }
        return readyCalls
    }

    func takeClosedDispatchedStreams() -> [Int32] {
        defer { closedDispatchedStreams.removeAll(keepingCapacity: true) }
        return closedDispatchedStreams
    }

    /// Refuses new streams and lets open ones finish.
    func goAway() {
        guard !goAwaySent else { return }
        goAwaySent = true
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue),
                              nghttp2_session_get_last_proc_stream_id(session),
                              UInt32(NGHTTP2_NO_ERROR.rawValue), nil, 0)
    }

    /// Ends the session at once (GOAWAY, no further streams served).
    func terminate() {
        goAwaySent = true
        nghttp2_session_terminate_session(session, UInt32(NGHTTP2_NO_ERROR.rawValue))
    }

    // MARK: - Responses

    /// Sends a handler's result. Ignored when the stream has already been
    /// answered (deadline passed) or closed (client reset).
    func respond(streamID: Int32, result: Result<[UInt8], RPCError>) {
        guard let stream = streams[streamID], !stream.answered else { return }
        switch result {
        case let .success(message):
            stream.answered = true
            stream.outgoing = MessageFraming.frame(message)
            var provider = nghttp2_data_provider()
            provider.read_callback = { session, streamID, buffer, capacity, flags, _, user in
                HTTP2ServerSession.from(user).readBody(session, streamID, buffer!, capacity, flags!)
            }
            StaticHeaders.okResponse.withUnsafeBufferPointer { headers in
                _ = nghttp2_submit_response(session, streamID, headers.baseAddress, headers.count, &provider)
            }
        case let .failure(error):
            answer(stream, streamID, error)
        }
    }

    /// Streams past their deadline get DEADLINE_EXCEEDED; returns their ids
    /// so the owner can cancel the handlers still running for them.
    func expireDeadlines(now: MonotonicInstant) -> [Int32] {
        guard streamsWithDeadline > 0 else { return [] }
        var expired: [Int32] = []
        for (id, stream) in streams where !stream.answered {
            if let deadline = stream.deadline, deadline <= now {
                expired.append(id)
                answer(stream, id, RPCError(.deadlineExceeded, "deadline exceeded before the call finished"))
            }
        }
        return expired
    }

    /// The earliest deadline of a stream still waiting for its answer.
    func nextDeadline() -> MonotonicInstant? {
        guard streamsWithDeadline > 0 else { return nil }
        var earliest: MonotonicInstant?
        for stream in streams.values where !stream.answered {
            if let deadline = stream.deadline, earliest.map({ deadline < $0 }) ?? true { earliest = deadline }
        }
        return earliest
    }

    /// A trailers-only response: HEADERS with the status and END_STREAM.
    private func answer(_ stream: Stream, _ streamID: Int32, _ error: RPCError, httpStatus: String = "200",
                        extraHeaders: [(String, String)] = []) {
        stream.answered = true
        if !stream.dispatched {
            // Calls refused before a handler ran still get their log line.
            CallLog.record(context: CallContext(method: stream.path, deadline: nil, logger: logger),
                           started: stream.openedAt, result: .failure(error), request: nil)
        }
        var fields: [(String, String)] = [
            (":status", httpStatus),
            ("content-type", "application/grpc"),
            ("grpc-status", String(error.code.rawValue)),
        ]
        if !error.message.isEmpty {
            fields.append(("grpc-message", GRPCMessageEncoding.encode(error.message)))
        }
        fields += extraHeaders
        withHeaderList(fields) { headers, count in
            _ = nghttp2_submit_response(session, streamID, headers, count, nil)
        }
    }

    private func readBody(_ session: OpaquePointer?, _ streamID: Int32, _ buffer: UnsafeMutablePointer<UInt8>,
                          _ capacity: Int, _ flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let stream = streams[streamID] else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        let remaining = stream.outgoing.count - stream.outgoingOffset
        let count = min(remaining, capacity)
        stream.outgoing.withUnsafeBufferPointer { source in
            buffer.update(from: source.baseAddress! + stream.outgoingOffset, count: count)
        }
        stream.outgoingOffset += count
        if stream.outgoingOffset == stream.outgoing.count {
            // The status travels in trailers, so DATA must not end the stream.
            flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue | NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
            StaticHeaders.okTrailers.withUnsafeBufferPointer { trailers in
                _ = nghttp2_submit_trailer(session, streamID, trailers.baseAddress, trailers.count)
            }
            stream.outgoing = []
        }
        return count
    }

    // MARK: - nghttp2 callbacks

    private func isRequestHeaders(_ frame: UnsafePointer<nghttp2_frame>) -> Bool {
        frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) && frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST
    }

    private func beginHeaders(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        if isRequestHeaders(frame) {
            streams[frame.pointee.hd.stream_id] = Stream(maxMessageBytes: limits.maxRequestMessageBytes, openedAt: .now())
        }
        return 0
    }

    private func header(_ frame: UnsafePointer<nghttp2_frame>, name: UnsafeBufferPointer<UInt8>,
                        value: UnsafeBufferPointer<UInt8>) -> Int32 {
        guard isRequestHeaders(frame), let stream = streams[frame.pointee.hd.stream_id] else { return 0 }
        switch name.count {
        case 5 where name.holds(":path"): stream.path = String(decoding: value, as: UTF8.self)
        case 7 where name.holds(":method"): stream.method = String(decoding: value, as: UTF8.self)
        case 12 where name.holds("content-type"): stream.contentType = String(decoding: value, as: UTF8.self)
        case 12 where name.holds("grpc-timeout"): stream.timeoutHeader = Array(value)
        case 13 where name.holds("grpc-encoding"): stream.encoding = String(decoding: value, as: UTF8.self)
        default: break
        }
        return 0
    }

    private func frameReceived(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let streamID = frame.pointee.hd.stream_id
        let type = frame.pointee.hd.type
        let endsStream = frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        guard type == UInt8(NGHTTP2_HEADERS.rawValue) || type == UInt8(NGHTTP2_DATA.rawValue),
              let stream = streams[streamID] else { return 0 }
        if isRequestHeaders(frame) {
            headersComplete(stream, streamID)
        }
        if endsStream, !stream.answered {
            requestComplete(stream, streamID)
        }
        return 0
    }

    /// Checks what can be checked before the body arrives, like grpc-go.
    private func headersComplete(_ stream: Stream, _ streamID: Int32) {
        if let timeout = stream.timeoutHeader {
            guard let nanoseconds = GRPCTimeout.parse(timeout) else {
                let shown = String(decoding: timeout, as: UTF8.self)
                return answer(stream, streamID, RPCError(.internal, "transport: malformed grpc-timeout: \"\(shown)\""))
            }
            stream.deadline = stream.openedAt.advanced(byNanoseconds: nanoseconds)
            streamsWithDeadline += 1
        }
        if stream.method != "POST" {
            return answer(stream, streamID, RPCError(.internal, "invalid gRPC request method \"\(stream.method)\""),
                          httpStatus: "405")
        }
        if !(stream.contentType == "application/grpc" || stream.contentType.hasPrefix("application/grpc+")
            || stream.contentType.hasPrefix("application/grpc;")) {
            return answer(stream, streamID,
                          RPCError(.internal, "invalid gRPC request content-type \"\(stream.contentType)\""),
                          httpStatus: "415")
        }
        if !stream.encoding.isEmpty, stream.encoding != "identity" {
            return answer(stream, streamID,
                          RPCError(.unimplemented, "grpc: Decompressor is not installed for grpc-encoding \"\(stream.encoding)\""),
                          extraHeaders: [("grpc-accept-encoding", "identity")])
        }
        if router.handler(for: stream.path) == nil {
            return answer(stream, streamID, router.unknownMethodError(stream.path))
        }
    }

    private func dataReceived(_ streamID: Int32, _ data: UnsafeRawBufferPointer) -> Int32 {
        guard let stream = streams[streamID], !stream.answered else { return 0 }
        do {
            try stream.reader.append(data)
        } catch {
            answer(stream, streamID, error.rpcError)
        }
        return 0
    }

    private func requestComplete(_ stream: Stream, _ streamID: Int32) {
        do {
            let message = try stream.reader.finish()
            stream.dispatched = true
            readyCalls.append(IncomingCall(streamID: streamID, path: stream.path, deadline: stream.deadline, message: message))
        } catch {
            answer(stream, streamID, error.rpcError)
        }
    }

    private func streamClosed(_ streamID: Int32) -> Int32 {
        if let stream = streams.removeValue(forKey: streamID) {
            if stream.deadline != nil { streamsWithDeadline -= 1 }
            if stream.dispatched { closedDispatchedStreams.append(streamID) }
        }
        return 0
    }
}

/// Header blocks every OK response shares, built once. nghttp2 copies them
/// on submit, but skipping the copy (NO_COPY flags) is safe because these
/// bytes live for the whole process.
private enum StaticHeaders {
    nonisolated(unsafe) static let okResponse: [nghttp2_nv] = [
        permanent(":status", "200"),
        permanent("content-type", "application/grpc"),
    ]
    nonisolated(unsafe) static let okTrailers: [nghttp2_nv] = [
        permanent("grpc-status", "0"),
    ]

    private static func permanent(_ name: String, _ value: String) -> nghttp2_nv {
        func leak(_ text: String) -> (UnsafePointer<UInt8>, Int) {
            let bytes = Array(text.utf8)
            let storage = UnsafeMutablePointer<UInt8>.allocate(capacity: bytes.count)
            storage.initialize(from: bytes, count: bytes.count)
            return (UnsafePointer(storage), bytes.count)
        }
        let (namePointer, nameLength) = leak(name)
        let (valuePointer, valueLength) = leak(value)
        var nv = CNGHTTP2_make_nv(namePointer, nameLength, valuePointer, valueLength)
        nv.flags = UInt8(NGHTTP2_NV_FLAG_NO_COPY_NAME.rawValue | NGHTTP2_NV_FLAG_NO_COPY_VALUE.rawValue)
        return nv
    }
}

/// Calls `body` with an nghttp2 header list for `fields`, valid only inside.
func withHeaderList<R>(_ fields: [(String, String)], _ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
    var storage: [UInt8] = []
    storage.reserveCapacity(fields.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count })
    var spans: [(name: Int, nameLength: Int, value: Int, valueLength: Int)] = []
    spans.reserveCapacity(fields.count)
    for (name, value) in fields {
        let nameStart = storage.count
        storage.appendBytes(of: name)
        let valueStart = storage.count
        storage.appendBytes(of: value)
        spans.append((nameStart, valueStart - nameStart, valueStart, storage.count - valueStart))
    }
    return storage.withUnsafeBufferPointer { bytes in
        let base = bytes.baseAddress!
        let list = spans.map { CNGHTTP2_make_nv(base + $0.name, $0.nameLength, base + $0.value, $0.valueLength) }
        return list.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
    }
}

private extension [UInt8] {
    /// A string's UTF-8 bytes, copied as one block into the capacity reserved above.
    mutating func appendBytes(of text: String) {
        var text = text
        text.withUTF8 { append(contentsOf: $0) }
    }
}

private extension UnsafeBufferPointer<UInt8> {
    /// The same bytes as `literal`, compared buffer to buffer (every request
    /// header is matched against these names; against String.UTF8View it went
    /// through the view's per-byte indexing).
    func holds(_ literal: StaticString) -> Bool {
        count == literal.utf8CodeUnitCount
            && elementsEqual(UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
    }
}
