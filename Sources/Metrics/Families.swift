import Synchronization

/// One metric family in Prometheus's text exposition format (version 0.0.4).
public protocol MetricFamily: Sendable {
    var name: String { get }
    func render(into text: inout String)
}

/// A counter per combination of label values.
public final class CounterFamily: MetricFamily {
    public let name: String
    let help: String
    let labelNames: [String]
    private let values = Mutex<[[String]: Double]>([:])

    public init(_ name: String, help: String, labels: [String]) {
        self.name = name
        self.help = help
        labelNames = labels
    }

    public func increment(_ labels: [String], by amount: Double = 1) {
        precondition(labels.count == labelNames.count, "\(name) takes labels \(labelNames)")
        values.withLock { $0[labels, default: 0] += amount }
    }

    public func value(_ labels: [String]) -> Double {
        values.withLock { $0[labels] ?? 0 }
    }

    public func render(into text: inout String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) counter\n"
        for (labels, value) in values.withLock({ $0 }).sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            text += name + Exposition.labels(labelNames, labels) + " " + Exposition.number(value) + "\n"
        }
    }
}

/// A histogram per combination of label values, with fixed upper bounds.
public final class HistogramFamily: MetricFamily {
    struct Series {
        var bucketCounts: [UInt64]
        var sum: Double = 0
        var count: UInt64 = 0
    }

    public let name: String
    let help: String
    let labelNames: [String]
    let bounds: [Double]
    private let series = Mutex<[[String]: Series]>([:])

    /// Seconds, from a fast local call to a Proxmox task that takes minutes.
    public static let secondsBounds: [Double] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]

    public init(_ name: String, help: String, labels: [String], bounds: [Double] = HistogramFamily.secondsBounds) {
        self.name = name
        self.help = help
        labelNames = labels
        self.bounds = bounds.sorted()
    }

    public func observe(_ labels: [String], _ value: Double) {
        precondition(labels.count == labelNames.count, "\(name) takes labels \(labelNames)")
        series.withLock { all in
            var entry = all[labels] ?? Series(bucketCounts: Array(repeating: 0, count: bounds.count))
            for (index, bound) in bounds.enumerated() where value <= bound { entry.bucketCounts[index] += 1 }
            entry.sum += value
            entry.count += 1
            all[labels] = entry
        }
    }

    public func count(_ labels: [String]) -> UInt64 {
        series.withLock { $0[labels]?.count ?? 0 }
    }

    public func render(into text: inout String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (labels, entry) in series.withLock({ $0 }).sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            for (index, bound) in bounds.enumerated() {
                text += name + "_bucket" + Exposition.labels(labelNames + ["le"], labels + [Exposition.number(bound)])
                    + " \(entry.bucketCounts[index])\n"
            }
            text += name + "_bucket" + Exposition.labels(labelNames + ["le"], labels + ["+Inf"]) + " \(entry.count)\n"
            text += name + "_sum" + Exposition.labels(labelNames, labels) + " " + Exposition.number(entry.sum) + "\n"
            text += name + "_count" + Exposition.labels(labelNames, labels) + " \(entry.count)\n"
        }
    }
}

/// A gauge that is always 1 and carries facts in its labels (`*_info`).
public struct InfoFamily: MetricFamily {
    public let name: String
    let help: String
    let labels: [(String, String)]

    public init(_ name: String, help: String, labels: [(String, String)]) {
        self.name = name
        self.help = help
        self.labels = labels
    }

    public func render(into text: inout String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n"
        text += name + Exposition.labels(labels.map(\.0), labels.map(\.1)) + " 1\n"
    }
}

/// The families a process exposes, rendered together.
public final class MetricsRegistry: Sendable {
    private let families = Mutex<[any MetricFamily]>([])

    public init() {}

    public func register<Family: MetricFamily>(_ family: Family) -> Family {
        families.withLock { $0.append(family) }
        return family
    }

    public func render() -> String {
        var text = ""
        for family in families.withLock({ $0 }) { family.render(into: &text) }
        return text
    }
}

enum Exposition {
    static func labels(_ names: [String], _ values: [String]) -> String {
        guard !names.isEmpty else { return "" }
        return "{" + zip(names, values).map { "\($0)=\"\(escape($1))\"" }.joined(separator: ",") + "}"
    }

    /// Label values escape backslash, double quote and newline.
    static func escape(_ value: String) -> String {
        value.replacing("\\", with: "\\\\").replacing("\"", with: "\\\"")
            .replacing("\n", with: "\\n")
    }

    static func number(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}
