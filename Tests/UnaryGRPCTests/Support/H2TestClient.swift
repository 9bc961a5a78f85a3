import CNGHTTP2
@testable import UnaryGRPC

/// A minimal HTTP/2 client on nghttp2's memory API, for driving the server
/// session (in memory) or a real server (over a socket) from tests.
final class H2TestClient {
    struct Response {
        var headers: [String: String] = [:]
        var trailers: [String: String] = [:]
        var body: [UInt8] = []
        var closed = false
        var resetCode: UInt32 = 0

        /// Status from trailers, or from headers of a trailers-only response.
        var grpcStatus: Int? { (trailers["grpc-status"] ?? headers["grpc-status"]).flatMap { Int($0) } }
        var grpcMessage: String? {
            (trailers["grpc-message"] ?? headers["grpc-message"]).map(GRPCMessageEncoding.decode)
        }
        /// The response message without its 5-byte prefix.
        var message: [UInt8]? { body.count >= 5 ? Array(body[5...]) : nil }
    }

    private var session: OpaquePointer?
    private var bodies: [Int32: (bytes: [UInt8], offset: Int, endStream: Bool)] = [:]
    private(set) var responses: [Int32: Response] = [:]
    private var inTrailers: Set<Int32> = []

    init() {
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, user in
            let client = H2TestClient.from(user)
            let id = frame!.pointee.hd.stream_id
            if frame!.pointee.headers.cat == NGHTTP2_HCAT_HEADERS { client.inTrailers.insert(id) }
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, user in
            let client = H2TestClient.from(user)
            let id = frame!.pointee.hd.stream_id
            let key = String(decoding: UnsafeBufferPointer(start: name, count: nameLength), as: UTF8.self)
            let text = String(decoding: UnsafeBufferPointer(start: value, count: valueLength), as: UTF8.self)
            if client.inTrailers.contains(id) {
                client.responses[id, default: Response()].trailers[key] = text
            } else {
                client.responses[id, default: Response()].headers[key] = text
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, id, data, length, user in
            H2TestClient.from(user).responses[id, default: Response()].body.append(contentsOf: UnsafeBufferPointer(start: data, count: length))
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, id, code, user in
            let client = H2TestClient.from(user)
            client.responses[id, default: Response()].closed = true
            client.responses[id, default: Response()].resetCode = code
            return 0
        }
        nghttp2_session_client_new(&session, callbacks, Unmanaged.passUnretained(self).toOpaque())
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil, 0)
    }

    deinit { nghttp2_session_del(session) }

    private static func from(_ user: UnsafeMutableRawPointer?) -> H2TestClient {
        Unmanaged<H2TestClient>.fromOpaque(user!).takeUnretainedValue()
    }

    /// Starts a request. `body` is sent as given (already framed), so tests
    /// can send broken framing; `endStream: false` leaves the stream open.
    @discardableResult
    func request(path: String, body: [UInt8], headers extra: [(String, String)] = [],
                 contentType: String = "application/grpc", method: String = "POST", endStream: Bool = true) -> Int32 {
        var fields: [(String, String)] = [
            (":method", method), (":scheme", "http"), (":path", path), (":authority", "localhost"),
            ("content-type", contentType), ("te", "trailers"),
        ]
        fields += extra
        var provider = nghttp2_data_provider()
        provider.read_callback = { _, id, buffer, capacity, flags, _, user in
            let client = H2TestClient.from(user)
            guard var entry = client.bodies[id] else { return 0 }
            let count = min(capacity, entry.bytes.count - entry.offset)
            entry.bytes.withUnsafeBufferPointer { buffer!.update(from: $0.baseAddress! + entry.offset, count: count) }
            entry.offset += count
            client.bodies[id] = entry
            if entry.offset == entry.bytes.count {
                if entry.endStream {
                    flags!.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
                } else if count == 0 {
                    return Int(NGHTTP2_ERR_DEFERRED.rawValue)
                }
            }
            return count
        }
        let id = withHeaderList(fields) { list, count in
            nghttp2_submit_request(session, nil, list, count, &provider, nil)
        }
        bodies[id] = (body, 0, endStream)
        return id
    }

    /// A framed request for a unary call.
    @discardableResult
    func call(_ path: String, message: [UInt8], headers: [(String, String)] = []) -> Int32 {
        request(path: path, body: MessageFraming.frame(message), headers: headers)
    }

    func reset(_ streamID: Int32) {
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, UInt32(NGHTTP2_CANCEL.rawValue))
    }

    func receive(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { _ = nghttp2_session_mem_recv(session, $0.baseAddress, $0.count) }
    }

    func drainOutput() -> [UInt8] {
        var out: [UInt8] = []
        while true {
            var chunk: UnsafePointer<UInt8>?
            let length = nghttp2_session_mem_send(session, &chunk)
            guard length > 0, let chunk else { return out }
            out.append(contentsOf: UnsafeBufferPointer(start: chunk, count: length))
        }
    }

    var goAwayReceived: Bool { nghttp2_session_want_read(session) == 0 }
}
