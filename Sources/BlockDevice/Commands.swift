import Foundation

public struct CommandResult: Sendable {
    public var status: Int32
    /// Standard output and error, interleaved.
    public var output: String

    public var succeeded: Bool { status == 0 }
}

/// Runs external tools (mkfs, mount, fsck, growfs). Tests may substitute one.
public protocol CommandRunning: Sendable {
    func run(_ tool: String, _ arguments: [String]) async throws -> CommandResult
}

/// Runs a process and waits for it on a dispatch queue of its own, so the
/// wait never blocks a thread of Swift's cooperative pool.
public struct ProcessRunner: CommandRunning {
    private static let queue = DispatchQueue(label: "blockdevice.commands", attributes: .concurrent)

    public init() {}

    public func run(_ tool: String, _ arguments: [String]) async throws -> CommandResult {
        try await withCheckedThrowingContinuation { continuation in
            Self.queue.async {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                process.arguments = [tool] + arguments
                var environment = ProcessInfo.processInfo.environment
                environment["PATH"] = (environment["PATH"].map { $0 + ":" } ?? "") + "/usr/sbin:/sbin:/usr/bin:/bin"
                process.environment = environment
                let pipe = Pipe()
                process.standardOutput = pipe
                process.standardError = pipe
                process.standardInput = FileHandle.nullDevice
                do {
                    try process.run()
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                let output = pipe.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                continuation.resume(returning: CommandResult(status: process.terminationStatus,
                                                             output: String(decoding: output, as: UTF8.self)))
            }
        }
    }
}
