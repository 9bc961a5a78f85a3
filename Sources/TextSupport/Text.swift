/// The few string operations the driver needs from a standard library that
/// has no Foundation: trimming, paths, percent-encoding, fixed decimals.
/// Foundation's versions would link all of Foundation and ICU into every node's memory.

extension Character {
    /// ASCII whitespace or a control character (what command output and sysfs pad with).
    public var isBlankOrControl: Bool {
        isWhitespace || (asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false)
    }
}

extension StringProtocol {
    /// Without leading and trailing whitespace and newlines.
    public func trimmed() -> String { trimmed(while: \.isWhitespace) }

    public func trimmed(while strip: (Character) -> Bool) -> String {
        guard let first = firstIndex(where: { !strip($0) }), let last = lastIndex(where: { !strip($0) }) else { return "" }
        return String(self[first...last])
    }

    /// Cut or filled with spaces to `width` characters (a table column).
    public func padded(to width: Int) -> String {
        count >= width ? String(prefix(width)) : String(self) + String(repeating: " ", count: width - count)
    }

    /// The part after the last `/` (the whole string when there is none).
    public var lastPathComponent: String {
        let path = hasSuffix("/") && count > 1 ? String(dropLast()) : String(self)
        return path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
    }

    /// The part before the last `/`: "" for a bare name, "/" for a file at the root.
    public var deletingLastPathComponent: String {
        guard let slash = lastIndex(of: "/") else { return "" }
        return slash == startIndex ? "/" : String(self[..<slash])
    }

    /// An absolute path with `.`, `..` and repeated slashes resolved (no symlinks followed).
    public var standardizedPath: String {
        var parts: [Substring] = []
        for part in split(separator: "/") {
            switch part {
            case ".": continue
            case "..": if !parts.isEmpty { parts.removeLast() }
            default: parts.append(Substring(part))
            }
        }
        return (hasPrefix("/") ? "/" : "") + parts.joined(separator: "/")
    }

    /// Every byte outside RFC 3986's unreserved set percent-encoded: safe as one URL path segment.
    public var percentEncodedSegment: String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(byte)
            default:
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension Double {
    /// The value rounded to `decimals` places, as `String(format: "%.Nf")` writes it.
    public func formatted(decimals: Int) -> String {
        guard isFinite else { return "\(self)" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (abs(self) * scale).rounded()
        let whole = Int64(scaled / scale)
        let fraction = Int64(scaled) - whole * Int64(scale)
        let sign = self < 0 && scaled != 0 ? "-" : ""
        guard decimals > 0 else { return "\(sign)\(whole)" }
        let digits = String(fraction)
        return "\(sign)\(whole)." + String(repeating: "0", count: decimals - digits.count) + digits
    }
}

/// Byte classes for checking short ASCII names by hand. A Swift regex literal
/// is parsed and compiled again each time the expression runs: the
/// controller's config scans spent 89% of its CPU doing so for disk keys.
public enum ASCII {
    public static func isLower(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z") }
    public static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
    public static func isLowerHex(_ byte: UInt8) -> Bool { isDigit(byte) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "f")) }
    public static func isLowerOrDigit(_ byte: UInt8) -> Bool { isLower(byte) || isDigit(byte) }
}

extension StringProtocol {
    /// `prefix` followed by one or more ASCII digits and nothing else (`scsi12` for "scsi").
    public func isNumbered(_ prefix: String) -> Bool {
        guard hasPrefix(prefix) else { return false }
        let digits = utf8.dropFirst(prefix.utf8.count)
        return !digits.isEmpty && digits.allSatisfy(ASCII.isDigit)
    }
}

extension String {
    /// Whether a `/`-separated component is exactly `..`. By bytes, on a concrete
    /// String: splitting into Substrings cost a stats call a fifth of its time,
    /// and the generic StringProtocol version (unspecialised across modules)
    /// another quarter.
    public var hasParentReference: Bool {
        if let found = utf8.withContiguousStorageIfAvailable(Self.hasParentReference(in:)) { return found }
        return Self.hasParentReference(in: Array(utf8))
    }

    private static func hasParentReference(in bytes: some Collection<UInt8>) -> Bool {
        var run = 0  // dots since the last slash; -1 once anything else came
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "/"):
                if run == 2 { return true }
                run = 0
            case UInt8(ascii: "."): if run >= 0 { run += 1 }
            default: run = -1
            }
        }
        return run == 2
    }
}
