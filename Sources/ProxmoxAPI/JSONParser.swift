#if canImport(Glibc)
import Glibc
#endif

/// A JSON reader (RFC 8259) over the bytes of a response, and the writer of
/// `JSONValue.serialized()`. Written here so the driver needs no Foundation:
/// JSONSerialization drags in all of it and ICU, megabytes of every node's memory.
struct JSONParser {
    struct Failure: Error, CustomStringConvertible {
        let offset: Int
        let problem: String
        var description: String { "invalid JSON at byte \(offset): \(problem)" }
    }

    /// Deeper than any Proxmox or Kubernetes answer; stops a hostile body from exhausting the stack.
    static let maximumDepth = 256

    private let bytes: UnsafeBufferPointer<UInt8>
    private var at = 0

    static func parse(_ input: [UInt8]) throws(Failure) -> JSONValue {
        try input.withUnsafeBufferPointer { (buffer) throws(Failure) -> JSONValue in
            var parser = JSONParser(bytes: buffer)
            let value = try parser.value(depth: 0)
            parser.skipWhitespace()
            guard parser.at == buffer.count else { throw parser.fail("text after the value") }
            return value
        }
    }

    private init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    private func fail(_ problem: String) -> Failure { Failure(offset: at, problem: problem) }

    private mutating func skipWhitespace() {
        while at < bytes.count, bytes[at] == 0x20 || bytes[at] == 0x0A || bytes[at] == 0x0D || bytes[at] == 0x09 { at += 1 }
    }

    private mutating func expect(_ word: StaticString, _ value: JSONValue) throws(Failure) -> JSONValue {
        let count = word.utf8CodeUnitCount
        guard at + count <= bytes.count else { throw fail("unexpected end") }
        for index in 0..<count where bytes[at + index] != word.utf8Start[index] { throw fail("unexpected character") }
        at += count
        return value
    }

    private mutating func value(depth: Int) throws(Failure) -> JSONValue {
        skipWhitespace()
        guard at < bytes.count else { throw fail("unexpected end") }
        switch bytes[at] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try expect("true", .bool(true))
        case UInt8(ascii: "f"): return try expect("false", .bool(false))
        case UInt8(ascii: "n"): return try expect("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
        default: throw fail("unexpected character")
        }
    }

    private mutating func object(depth: Int) throws(Failure) -> JSONValue {
        guard depth <= Self.maximumDepth else { throw fail("nested too deeply") }
        at += 1
        var members: [String: JSONValue] = [:]
        skipWhitespace()
        if at < bytes.count, bytes[at] == UInt8(ascii: "}") { at += 1; return .object(members) }
        while true {
            skipWhitespace()
            guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { throw fail("expected a member name") }
            let key = try string()
            skipWhitespace()
            guard at < bytes.count, bytes[at] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            at += 1
            members[key] = try value(depth: depth)
            skipWhitespace()
            guard at < bytes.count else { throw fail("unexpected end") }
            if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
            guard bytes[at] == UInt8(ascii: "}") else { throw fail("expected ',' or '}'") }
            at += 1
            return .object(members)
        }
    }

    private mutating func array(depth: Int) throws(Failure) -> JSONValue {
        guard depth <= Self.maximumDepth else { throw fail("nested too deeply") }
        at += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if at < bytes.count, bytes[at] == UInt8(ascii: "]") { at += 1; return .array(elements) }
        while true {
            elements.append(try value(depth: depth))
            skipWhitespace()
            guard at < bytes.count else { throw fail("unexpected end") }
            if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
            guard bytes[at] == UInt8(ascii: "]") else { throw fail("expected ',' or ']'") }
            at += 1
            return .array(elements)
        }
    }

    private mutating func string() throws(Failure) -> String {
        at += 1
        let start = at
        // The common case: no escapes, one copy of the bytes.
        while at < bytes.count, bytes[at] != UInt8(ascii: "\""), bytes[at] != UInt8(ascii: "\\") {
            guard bytes[at] >= 0x20 else { throw fail("control character in a string") }
            at += 1
        }
        guard at < bytes.count else { throw fail("unterminated string") }
        var utf8 = Array(bytes[start..<at])
        while bytes[at] != UInt8(ascii: "\"") {
            if bytes[at] == UInt8(ascii: "\\") {
                at += 1
                guard at < bytes.count else { throw fail("unterminated string") }
                switch bytes[at] {
                case UInt8(ascii: "\""): utf8.append(0x22)
                case UInt8(ascii: "\\"): utf8.append(0x5C)
                case UInt8(ascii: "/"): utf8.append(0x2F)
                case UInt8(ascii: "b"): utf8.append(0x08)
                case UInt8(ascii: "f"): utf8.append(0x0C)
                case UInt8(ascii: "n"): utf8.append(0x0A)
                case UInt8(ascii: "r"): utf8.append(0x0D)
                case UInt8(ascii: "t"): utf8.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800...0xDBFF).contains(scalar), at + 2 < bytes.count,
                       bytes[at + 1] == UInt8(ascii: "\\"), bytes[at + 2] == UInt8(ascii: "u") {
                        at += 2
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else { throw fail("unpaired surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    // A lone surrogate becomes U+FFFD, as a lenient reader does.
                    utf8.append(contentsOf: String(Character(Unicode.Scalar(scalar) ?? "\u{FFFD}")).utf8)
                default: throw fail("unknown escape")
                }
                at += 1
            } else {
                guard bytes[at] >= 0x20 else { throw fail("control character in a string") }
                utf8.append(bytes[at])
                at += 1
            }
            guard at < bytes.count else { throw fail("unterminated string") }
        }
        at += 1
        return String(decoding: utf8, as: UTF8.self)
    }

    /// Four hex digits after `\u`; leaves `at` on the last of them.
    private mutating func hex4() throws(Failure) -> UInt32 {
        guard at + 4 < bytes.count else { throw fail("short \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            at += 1
            let digit: UInt32
            switch bytes[at] {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(bytes[at] - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(bytes[at] - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(bytes[at] - UInt8(ascii: "A")) + 10
            default: throw fail("bad \\u escape")
            }
            value = value << 4 | digit
        }
        return value
    }

    private mutating func number() throws(Failure) -> Double {
        let start = at
        func digits(_ parser: inout JSONParser) -> Int {
            let from = parser.at
            while parser.at < parser.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(parser.bytes[parser.at]) { parser.at += 1 }
            return parser.at - from
        }
        if bytes[at] == UInt8(ascii: "-") { at += 1 }
        guard digits(&self) > 0 else { throw fail("expected digits") }
        if at < bytes.count, bytes[at] == UInt8(ascii: ".") {
            at += 1
            guard digits(&self) > 0 else { throw fail("expected digits after '.'") }
        }
        if at < bytes.count, bytes[at] == UInt8(ascii: "e") || bytes[at] == UInt8(ascii: "E") {
            at += 1
            if at < bytes.count, bytes[at] == UInt8(ascii: "+") || bytes[at] == UInt8(ascii: "-") { at += 1 }
            guard digits(&self) > 0 else { throw fail("expected exponent digits") }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<at]), as: UTF8.self)
        guard let value = Double(text) else { throw fail("number out of range") }
        return value
    }
}

/// Writes JSON with members in sorted order (a stable body: tests and logs compare it).
struct JSONWriter {
    private(set) var bytes: [UInt8] = []

    mutating func write(_ value: JSONValue) {
        switch value {
        case let .object(object):
            bytes.append(UInt8(ascii: "{"))
            for (index, key) in object.keys.sorted().enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                write(string: key)
                bytes.append(UInt8(ascii: ":"))
                write(object[key]!)
            }
            bytes.append(UInt8(ascii: "}"))
        case let .array(array):
            bytes.append(UInt8(ascii: "["))
            for (index, element) in array.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                write(element)
            }
            bytes.append(UInt8(ascii: "]"))
        case let .string(text): write(string: text)
        case let .number(number):
            // Whole numbers as integers (Kubernetes' quantities and generations are integers).
            if number == number.rounded(), abs(number) < 1e15 {
                bytes.append(contentsOf: String(Int64(number)).utf8)
            } else if number.isFinite {
                bytes.append(contentsOf: String(number).utf8)
            } else {
                bytes.append(contentsOf: "null".utf8)
            }
        case let .bool(flag): bytes.append(contentsOf: (flag ? "true" : "false").utf8)
        case .null: bytes.append(contentsOf: "null".utf8)
        }
    }

    private mutating func write(string: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): bytes.append(contentsOf: #"\\"#.utf8)
            case 0x0A: bytes.append(contentsOf: #"\n"#.utf8)
            case 0x0D: bytes.append(contentsOf: #"\r"#.utf8)
            case 0x09: bytes.append(contentsOf: #"\t"#.utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: #"\u00"#.utf8)
                bytes.append(hex[Int(byte >> 4)])
                bytes.append(hex[Int(byte & 0xF)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
