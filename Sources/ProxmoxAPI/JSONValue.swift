/// A decoded JSON value. Proxmox is loose with types (numbers as strings,
/// booleans as 0/1), so the accessors accept either form.
public enum JSONValue: Sendable, Equatable {
    case object([String: JSONValue])
    case array([JSONValue])
    case string(String)
    case number(Double)
    case bool(Bool)
    case null

    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        try JSONParser.parse(bytes)
    }

    /// The value as JSON text, members sorted.
    public func serialized() -> [UInt8] {
        var writer = JSONWriter()
        writer.write(self)
        return writer.bytes
    }

    public subscript(key: String) -> JSONValue {
        if case let .object(object) = self { return object[key] ?? .null }
        return .null
    }

    public var string: String? {
        switch self {
        case let .string(value): value
        case let .number(value): value == value.rounded() ? String(Int64(value)) : String(value)
        case let .bool(value): value ? "1" : "0"
        default: nil
        }
    }

    public var int: Int64? {
        switch self {
        case let .number(value): Int64(exactly: value.rounded()) ?? nil
        case let .string(value): Int64(value)
        case let .bool(value): value ? 1 : 0
        default: nil
        }
    }

    public var bool: Bool? {
        switch self {
        case let .bool(value): value
        case let .number(value): value != 0
        case let .string(value): value == "1" || value == "true"
        default: nil
        }
    }

    public var array: [JSONValue]? {
        if case let .array(value) = self { return value }
        return nil
    }

    public var object: [String: JSONValue]? {
        if case let .object(value) = self { return value }
        return nil
    }

    public var isNull: Bool { self == .null }
}
