#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A point on the monotonic clock, in nanoseconds. Cheap to read and compare
/// on the I/O threads, which must not allocate or await to check deadlines.
public struct MonotonicInstant: Sendable, Comparable, Hashable {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static func now() -> MonotonicInstant {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return MonotonicInstant(nanoseconds: UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec))
    }

    public func advanced(byNanoseconds delta: UInt64) -> MonotonicInstant {
        let (sum, overflow) = nanoseconds.addingReportingOverflow(delta)
        return MonotonicInstant(nanoseconds: overflow ? .max : sum)
    }

    /// Nanoseconds from `self` until `later`, zero if `later` has passed.
    public func nanoseconds(until later: MonotonicInstant) -> UInt64 {
        later.nanoseconds > nanoseconds ? later.nanoseconds - nanoseconds : 0
    }

    public func seconds(until later: MonotonicInstant) -> Double {
        Double(nanoseconds(until: later)) / 1_000_000_000
    }

    public static func < (a: MonotonicInstant, b: MonotonicInstant) -> Bool { a.nanoseconds < b.nanoseconds }
}

/// The `grpc-timeout` request header: 1–8 ASCII digits and a unit
/// (H hours, M minutes, S seconds, m milli-, u micro-, n nanoseconds).
public enum GRPCTimeout {
    /// The timeout in nanoseconds, or nil when the value is malformed.
    public static func parse(_ value: some BidirectionalCollection<UInt8>) -> UInt64? {
        guard value.count >= 2, value.count <= 9, let unit = value.last else { return nil }
        var amount: UInt64 = 0
        for byte in value.dropLast() {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            amount = amount * 10 + UInt64(byte - UInt8(ascii: "0"))
        }
        let perUnit: UInt64
        switch unit {
        case UInt8(ascii: "H"): perUnit = 3_600_000_000_000
        case UInt8(ascii: "M"): perUnit = 60_000_000_000
        case UInt8(ascii: "S"): perUnit = 1_000_000_000
        case UInt8(ascii: "m"): perUnit = 1_000_000
        case UInt8(ascii: "u"): perUnit = 1_000
        case UInt8(ascii: "n"): perUnit = 1
        default: return nil
        }
        let (product, overflow) = amount.multipliedReportingOverflow(by: perUnit)
        return overflow ? .max : product
    }
}
