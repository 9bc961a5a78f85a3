#if canImport(Glibc)
import Glibc
#endif
import CLinux
import Dispatch

public struct CommandResult: Sendable {
    /// The exit status; 128 + N when signal N ended the process.
    public var status: Int32
    /// Standard output and error, interleaved.
    public var output: String

    public var succeeded: Bool { status == 0 }
}

/// Runs external tools (mkfs, mount, fsck, growfs). Tests may substitute one.
public protocol CommandRunning: Sendable {
    func run(_ tool: String, _ arguments: [String]) async throws -> CommandResult
}

/// Runs a tool with posix_spawn and waits for it on a dispatch queue of its
/// own, so the wait never blocks a thread of Swift's cooperative pool.
/// (Foundation's Process costs milliseconds more per spawn, and NodeStage
/// spawns up to three tools.)
public struct ProcessRunner: CommandRunning {
    public struct SpawnFailure: Error, CustomStringConvertible {
        public let description: String
    }

    private static let queue = DispatchQueue(label: "blockdevice.commands", attributes: .concurrent)
    /// Tools come from the system's directories only: a privileged plugin
    /// must not run whatever an inherited PATH names first.
    static let searchPath = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]

    public init() {}

    static func executable(_ tool: String) -> String? {
        if tool.hasPrefix("/") { return tool }
        return searchPath.lazy.map { $0 + "/" + tool }.first { access($0, X_OK) == 0 }
    }

    public func run(_ tool: String, _ arguments: [String]) async throws -> CommandResult {
        guard let executable = Self.executable(tool) else {
            return CommandResult(status: 127, output: "\(tool): not found in \(Self.searchPath.joined(separator: ":"))")
        }
        return try await withCheckedThrowingContinuation { continuation in
            Self.queue.async {
                continuation.resume(with: Result { try Self.spawnAndWait(executable, arguments) })
            }
        }
    }

    static func spawnAndWait(_ executable: String, _ arguments: [String]) throws -> CommandResult {
        var pipeEnds: [Int32] = [-1, -1]
        guard CLinux_pipe_cloexec(&pipeEnds) == 0 else { throw failure("pipe", errno) }
        let (readEnd, writeEnd) = (pipeEnds[0], pipeEnds[1])

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, 1)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, 2)
        // Nothing else the driver holds reaches the tool: a file descriptor
        // opened without O_CLOEXEC (Foundation's temporary files are) would
        // keep a mount busy until the tool exits, and an unmount meanwhile
        // fails with EBUSY.
        CLinux_spawn_close_from(&actions, 3)

        // The driver blocks SIGTERM/SIGINT (sigwait) and ignores SIGPIPE; a
        // tool starts with neither.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        // Tools' messages reach users verbatim: keep them in one language.
        var environment = environmentStrings().filter { !$0.hasPrefix("LC_ALL=") } + ["LC_ALL=C"]
        if !environment.contains(where: { $0.hasPrefix("PATH=") }) { environment.append("PATH=" + searchPath.joined(separator: ":")) }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }

        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        close(writeEnd)
        guard spawned == 0 else {
            close(readEnd)
            throw failure("starting \(executable)", spawned)
        }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = read(readEnd, &buffer, buffer.count)
            if count > 0 { output += buffer[0..<count] } else if count == 0 || errno != EINTR { break }
        }
        close(readEnd)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw failure("waiting for \(executable)", errno) }
        }
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot see.
        let signal = status & 0x7f
        return CommandResult(status: signal == 0 ? (status >> 8) & 0xff : 128 + signal,
                             output: String(decoding: output, as: UTF8.self))
    }

    private static func environmentStrings() -> [String] {
        var strings: [String] = []
        var cursor = environ
        while let entry = cursor.pointee {
            strings.append(String(cString: entry))
            cursor += 1
        }
        return strings
    }

    private static func failure(_ what: String, _ code: Int32) -> SpawnFailure {
        SpawnFailure(description: "\(what): \(String(cString: strerror(code)))")
    }
}
