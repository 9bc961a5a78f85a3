/// Shares reads among concurrent callers without ever handing one a stale
/// answer: a caller joins a read of its key only if that read started after
/// the caller asked, so what it gets reflects the state at or after its own
/// request. Under load this turns many identical reads (every attach scanning
/// the same VM configs) into a few.
///
/// A caller that finds a read in flight which started before it asked waits
/// for the read that follows it, shared by everyone who asks meanwhile: at
/// most two reads of a key are ever under way, however many callers arrive
/// while the server is slow to answer (500 publishes starting together had
/// each VM's config read once per caller while the first reads were answered).
public actor CoalescedReads<Key: Hashable & Sendable, Value: Sendable> {
    private struct Flight {
        let started: ContinuousClock.Instant
        let task: Task<Value, any Error>
    }

    private var flights: [Key: Flight] = [:]
    /// The read queued behind each key's flight, started when that flight ends.
    private var queued: [Key: Task<Value, any Error>] = [:]

    public init() {}

    /// `asked` nil: any read in flight will do.
    public func read(_ key: Key, asked: ContinuousClock.Instant?, _ fetch: @escaping @Sendable () async throws -> Value) async throws -> Value {
        guard let flight = flights[key] else { return try await start(key, fetch) }
        if asked.map({ flight.started >= $0 }) ?? true {
            return try await flight.task.value
        }
        if let next = queued[key] { return try await next.value }
        let next = Task {
            _ = try? await flight.task.value  // its answer may predate the callers waiting here
            return try await self.startQueued(key, fetch)
        }
        queued[key] = next
        return try await next.value
    }

    private func startQueued(_ key: Key, _ fetch: @escaping @Sendable () async throws -> Value) async throws -> Value {
        queued[key] = nil  // callers from now on asked after this read starts: they queue behind it
        return try await start(key, fetch)
    }

    private func start(_ key: Key, _ fetch: @escaping @Sendable () async throws -> Value) async throws -> Value {
        let started = ContinuousClock.now
        let task = Task { try await fetch() }
        flights[key] = Flight(started: started, task: task)
        defer {
            if flights[key]?.started == started { flights[key] = nil }
        }
        return try await task.value
    }
}
