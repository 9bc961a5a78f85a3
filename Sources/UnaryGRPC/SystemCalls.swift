#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CLinux

/// A failed system call, named, with its errno.
public struct SystemCallError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let errno: Int32

    public var description: String { "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// Runs a system call, retrying on EINTR, and throws an error naming it.
@discardableResult
func retryingOnInterrupt<T: FixedWidthInteger>(_ call: String, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = errno
        if code == EINTR { continue }
        throw SystemCallError(call: call, errno: code)
    }
}

/// Starts a named OS thread for blocking work that must stay off Swift's
/// cooperative pool (socket loops).
@discardableResult
public func spawnThread(named name: String, _ body: @escaping @Sendable () -> Void) throws(SystemCallError) -> pthread_t {
    final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { raw in
        Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, box)
    guard result == 0 else {
        Unmanaged<Box>.fromOpaque(box).release()
        throw SystemCallError(call: "pthread_create", errno: result)
    }
    _ = CLinux_pthread_setname(thread, String(name.utf8.prefix(15))!)
    return thread
}

/// An eventfd used to wake a thread blocked in poll.
struct WakeSignal: ~Copyable {
    let fd: Int32

    init() throws(SystemCallError) {
        fd = try retryingOnInterrupt("eventfd") { CLinux_eventfd(0, CLinux_EFD_NONBLOCK | CLinux_EFD_CLOEXEC) }
    }

    func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    func drain() {
        var value: UInt64 = 0
        _ = read(fd, &value, 8)
    }

    deinit { close(fd) }
}
