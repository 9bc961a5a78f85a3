/// Shares reads among concurrent callers without ever handing one a stale
/// answer: a caller joins a read of its key only if that read started after
/// the caller asked, so what it gets reflects the state at or after its own
/// request. Under load this turns many identical reads (every attach scanning
/// the same VM configs) into a few.
public actor CoalescedReads<Key: Hashable & Sendable, Value: Sendable> {
    private struct Flight {
        let started: ContinuousClock.Instant
        let task: Task<Value, any Error>
    }

    private var flights: [Key: Flight] = [:]

    public init() {}

    /// `asked` nil: any read in flight will do.
    public func read(_ key: Key, asked: ContinuousClock.Instant?, _ fetch: @escaping @Sendable () async throws -> Value) async throws -> Value {
        if let flight = flights[key], asked.map({ flight.started >= $0 }) ?? true {
            return try await flight.task.value
        }
        let started = ContinuousClock.now
        let task = Task { try await fetch() }
        flights[key] = Flight(started: started, task: task)
        defer {
            if flights[key]?.started == started { flights[key] = nil }
        }
        return try await task.value
    }
}
