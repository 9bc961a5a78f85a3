/// `grpc-message` is percent-encoded: bytes outside printable ASCII
/// (0x20–0x7E) and `%` itself travel as `%XX` of their UTF-8 bytes.
public enum GRPCMessageEncoding {
    public static func encode(_ message: String) -> String {
        // Most messages are plain ASCII text: they go as they are, with no copy.
        // (Checked over the contiguous bytes: walking String.UTF8View byte by
        // byte was 7% of an error answer.)
        let plain = message.utf8.withContiguousStorageIfAvailable { $0.allSatisfy(travelsAsIs) }
        if plain ?? message.utf8.allSatisfy(travelsAsIs) { return message }
        var out = [UInt8]()
        out.reserveCapacity(message.utf8.count)
        let hex = Array("0123456789ABCDEF".utf8)
        for byte in message.utf8 {
            if travelsAsIs(byte) {
                out.append(byte)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Lenient like grpc-go: a `%` not followed by two hex digits stays as is.
    public static func decode(_ encoded: String) -> String {
        let bytes = Array(encoded.utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "%"), i + 2 < bytes.count,
               let high = hexValue(bytes[i + 1]), let low = hexValue(bytes[i + 2]) {
                out.append(high << 4 | low)
                i += 3
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func travelsAsIs(_ byte: UInt8) -> Bool {
        byte >= 0x20 && byte <= 0x7E && byte != UInt8(ascii: "%")
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
