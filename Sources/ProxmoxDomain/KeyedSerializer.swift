/// Runs operations one at a time per key (a VM's config), any number of keys
/// at once. Proxmox locks a VM's config anyway; queueing here turns what
/// would be lock timeouts and digest conflicts into short waits.
public actor KeyedSerializer<Key: Hashable & Sendable> {
    private var queues: [Key: [CheckedContinuation<Void, Never>]] = [:]

    public init() {}

    public func run<T: Sendable>(_ key: Key, _ body: @Sendable () async throws -> T) async throws -> T {
        await acquire(key)
        defer { release(key) }
        return try await body()
    }

    private func acquire(_ key: Key) async {
        if queues[key] == nil {
            queues[key] = []
            return
        }
        await withCheckedContinuation { queues[key]!.append($0) }
    }

    private func release(_ key: Key) {
        guard var waiting = queues[key], !waiting.isEmpty else {
            queues[key] = nil
            return
        }
        let next = waiting.removeFirst()
        queues[key] = waiting
        next.resume()
    }
}
