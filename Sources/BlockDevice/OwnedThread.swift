#if canImport(Glibc)
import Glibc
#endif

/// Runs blocking work on a thread of its own, never on Swift's cooperative
/// pool or a shared dispatch queue: a write to a SCSI host's `scan` file, a
/// probe of a dying disk or a mkfs that blocks in the kernel then holds up
/// only itself, and every other RPC (Probe, with livenessprobe's 1 s
/// deadline) still gets a thread.
public enum OwnedThread {
    private final class Work {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts `body` on a new detached thread and returns at once.
    public static func start(_ body: @escaping @Sendable () -> Void) {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        pthread_attr_setstacksize(&attributes, 512 * 1024)
        let work = Unmanaged.passRetained(Work(body)).toOpaque()
        var thread = pthread_t()
        let started = pthread_create(&thread, &attributes, { raw in
            Unmanaged<Work>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, work)
        if started != 0 {
            // No thread to be had: run it here rather than drop it.
            Unmanaged<Work>.fromOpaque(work).takeRetainedValue().body()
        }
    }

    /// Runs `body` on a thread of its own and returns its result.
    public static func run<T: Sendable, E: Error>(_ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            start { continuation.resume(returning: Result { () throws(E) -> T in try body() }) }
        }
        return try result.get()
    }
}
