/// gRPC length-prefixed messages: a compressed-flag byte, a 4-byte
/// big-endian length, then the protobuf bytes.
public enum MessageFraming {
    public static let prefixLength = 5

    /// `message` with its 5-byte prefix (never compressed).
    public static func frame(_ message: [UInt8]) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(prefixLength + message.count)
        let length = UInt32(message.count)
        out.append(0)
        out.append(UInt8(truncatingIfNeeded: length >> 24))
        out.append(UInt8(truncatingIfNeeded: length >> 16))
        out.append(UInt8(truncatingIfNeeded: length >> 8))
        out.append(UInt8(truncatingIfNeeded: length))
        out.append(contentsOf: message)
        return out
    }
}

/// Collects the DATA of one unary request and checks its framing as bytes
/// arrive, so an oversized or compressed message is refused before it is
/// buffered whole.
struct UnaryRequestReader {
    enum Failure: Error, Equatable {
        case tooLarge(declared: Int, limit: Int)
        case compressedWithoutEncoding
        case moreThanOneMessage
        case noMessage
        case truncatedPrefix(received: Int)
        case truncated(expected: Int, received: Int)

        var rpcError: RPCError {
            switch self {
            case let .tooLarge(declared, limit):
                RPCError(.resourceExhausted, "grpc: received message larger than max (\(declared) vs. \(limit))")
            case .compressedWithoutEncoding:
                RPCError(.internal, "grpc: compressed flag set with identity or empty encoding")
            case .moreThanOneMessage:
                RPCError(.internal, "grpc: a unary call carried more than one request message")
            case .noMessage:
                RPCError(.internal, "grpc: the request stream ended without a message")
            case let .truncatedPrefix(received):
                RPCError(.internal, "grpc: the request stream ended inside a message's prefix (\(received) of 5 bytes)")
            case let .truncated(expected, received):
                RPCError(.internal, "grpc: the request stream ended inside a message (\(received) of \(expected) bytes)")
            }
        }
    }

    let maxMessageBytes: Int
    private(set) var buffer: [UInt8] = []
    /// Length of the message once its prefix has been read.
    private var declaredLength: Int?

    init(maxMessageBytes: Int) {
        self.maxMessageBytes = maxMessageBytes
    }

    /// Appends received DATA bytes; throws as soon as the framing is wrong.
    mutating func append(_ bytes: UnsafeRawBufferPointer) throws(Failure) {
        if let declared = declaredLength, buffer.count + bytes.count > MessageFraming.prefixLength + declared {
            throw .moreThanOneMessage
        }
        buffer.append(contentsOf: bytes)
        if declaredLength == nil, buffer.count >= MessageFraming.prefixLength {
            let length = Int(buffer[1]) << 24 | Int(buffer[2]) << 16 | Int(buffer[3]) << 8 | Int(buffer[4])
            if buffer[0] != 0 { throw .compressedWithoutEncoding }
            if length > maxMessageBytes { throw .tooLarge(declared: length, limit: maxMessageBytes) }
            declaredLength = length
            buffer.reserveCapacity(MessageFraming.prefixLength + length)
            if buffer.count > MessageFraming.prefixLength + length { throw .moreThanOneMessage }
        }
    }

    /// The message bytes once the request stream has ended.
    func finish() throws(Failure) -> [UInt8] {
        guard let declared = declaredLength else {
            if buffer.isEmpty { throw .noMessage }
            throw .truncatedPrefix(received: buffer.count)
        }
        guard buffer.count == MessageFraming.prefixLength + declared else {
            throw .truncated(expected: declared, received: buffer.count - MessageFraming.prefixLength)
        }
        return Array(buffer[MessageFraming.prefixLength...])
    }
}
