#if canImport(Glibc)
import Glibc
#endif
import CLinux

public struct CommandResult: Sendable {
    /// The exit status; 128 + N when signal N ended the process.
    public var status: Int32
    /// Standard output and error, interleaved.
    public var output: String
    /// It ran past its time limit and was killed.
    public var timedOut = false

    public var succeeded: Bool { status == 0 }
}

/// Runs external tools (mkfs, mount, fsck, growfs, cryptsetup). Tests may substitute one.
public protocol CommandRunning: Sendable {
    /// Runs `tool`, killing it once it has run `timeout` seconds. `input`, when
    /// given, is the tool's whole standard input (a key cryptsetup reads from
    /// `--key-file=-`): it goes through a pipe, never argv or the environment.
    func run(_ tool: String, _ arguments: [String], input: SecretBytes?, timeout: Double) async throws -> CommandResult
}

extension CommandRunning {
    public func run(_ tool: String, _ arguments: [String], timeout: Double) async throws -> CommandResult {
        try await run(tool, arguments, input: nil, timeout: timeout)
    }
}

/// Bytes that must never be printed: a passphrase. Interpolating one
/// (a log line, an error) shows a placeholder, not the bytes.
public struct SecretBytes: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public let bytes: [UInt8]
    /// The most a tool's standard input may hold: it is written into the pipe
    /// before the tool starts, and a pipe holds 64 KiB.
    public static let maximumCount = 32_768

    public init(_ text: String) {
        bytes = Array(text.utf8)
    }

    public var description: String { "<secret, \(bytes.count) bytes>" }
    public var debugDescription: String { description }
}

/// How long each tool may take before it is killed: a mount or mkfs stuck
/// on a dying disk must end its RPC with an error, not hold the volume forever.
public enum ToolTimeout {
    /// mkfs and fsck walk the whole device (mkfs.xfs discards it first).
    public static let format: Double = 600
    public static let check: Double = 600
    /// A mount replays the journal; a grow rewrites group descriptors.
    public static let mount: Double = 300
    public static let grow: Double = 300
}

/// Runs a tool with posix_spawn and waits for it on a thread of its own, so
/// the wait blocks neither Swift's cooperative pool nor a shared dispatch
/// pool. (Foundation's Process costs milliseconds more per spawn, and
/// NodeStage spawns up to three tools.)
public struct ProcessRunner: CommandRunning {
    public struct SpawnFailure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Tools come from the system's directories only: a privileged plugin
    /// must not run whatever an inherited PATH names first.
    static let searchPath = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]

    public init() {}

    static func executable(_ tool: String) -> String? {
        if tool.hasPrefix("/") { return tool }
        return searchPath.lazy.map { $0 + "/" + tool }.first { access($0, X_OK) == 0 }
    }

    public func run(_ tool: String, _ arguments: [String], input: SecretBytes?, timeout: Double) async throws -> CommandResult {
        guard let executable = Self.executable(tool) else {
            return CommandResult(status: 127, output: "\(tool): not found in \(Self.searchPath.joined(separator: ":"))")
        }
        return try await OwnedThread.run { () throws(SpawnFailure) in
            try Self.spawnAndWait(executable, arguments, input: input, timeout: timeout)
        }
    }

    static func spawnAndWait(_ executable: String, _ arguments: [String], input: SecretBytes? = nil,
                             timeout: Double) throws(SpawnFailure) -> CommandResult {
        let standardInput = try inputPipe(holding: input)
        defer { if let standardInput { close(standardInput) } }
        var pipeEnds: [Int32] = [-1, -1]
        guard CLinux_pipe_cloexec(&pipeEnds) == 0 else { throw failure("pipe", errno) }
        let (readEnd, writeEnd) = (pipeEnds[0], pipeEnds[1])

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let standardInput {
            posix_spawn_file_actions_adddup2(&actions, standardInput, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
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
        let deadline = ContinuousClock.now + .seconds(timeout)
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16_384)
        var outputEnded = false
        while !outputEnded, ContinuousClock.now < deadline {
            var ready = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            let polled = poll(&ready, 1, milliseconds(until: deadline))
            if polled < 0, errno != EINTR { break }
            guard polled > 0 else { continue }
            let count = read(readEnd, &buffer, buffer.count)
            if count > 0 { output += buffer[0..<count] } else if count == 0 || errno != EINTR { outputEnded = true }
        }
        close(readEnd)
        // A tool may close its output and still run: its exit is awaited against the same deadline.
        // Its output ends a moment before it can be reaped: a pidfd wakes this thread at the
        // exit itself, where a sleep would add a millisecond or more to every tool.
        let exitWatch = outputEnded ? CLinux_pidfd_open(pid) : -1
        defer { if exitWatch >= 0 { close(exitWatch) } }
        var status: Int32 = 0
        var exited = false
        var pause: UInt32 = 1_000
        while outputEnded, ContinuousClock.now < deadline {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { exited = true; break }
            if reaped < 0, errno != EINTR { throw failure("waiting for \(executable)", errno) }
            if exitWatch >= 0 {
                var ready = pollfd(fd: exitWatch, events: Int16(POLLIN), revents: 0)
                _ = poll(&ready, 1, milliseconds(until: deadline))
            } else {
                usleep(pause)  // a kernel without pidfd_open
                pause = min(pause * 2, 20_000)
            }
        }
        guard exited else {
            // The kernel may hold a tool stuck on a dead disk past SIGKILL: a
            // thread of its own reaps it whenever it ends, and the caller goes on.
            kill(pid, SIGKILL)
            OwnedThread.start { [pid] in
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0, errno == EINTR {}
            }
            let text = String(decoding: output, as: UTF8.self)
            return CommandResult(status: 128 + SIGKILL,
                                 output: text + (text.isEmpty ? "" : "\n") + "killed: no result within \(Int(timeout)) s",
                                 timedOut: true)
        }
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot see.
        let signal = status & 0x7f
        return CommandResult(status: signal == 0 ? (status >> 8) & 0xff : 128 + signal,
                             output: String(decoding: output, as: UTF8.self))
    }

    /// The read end of a pipe that already holds all of `input` and whose
    /// write end is closed, so the tool reads it to its end; nil without input.
    private static func inputPipe(holding input: SecretBytes?) throws(SpawnFailure) -> Int32? {
        guard let input else { return nil }
        guard input.bytes.count <= SecretBytes.maximumCount else {
            throw SpawnFailure(description: "standard input of \(input.bytes.count) bytes is more than \(SecretBytes.maximumCount)")
        }
        var ends: [Int32] = [-1, -1]
        guard CLinux_pipe_cloexec(&ends) == 0 else { throw failure("pipe", errno) }
        defer { close(ends[1]) }
        var written = 0
        while written < input.bytes.count {
            let count = input.bytes[written...].withUnsafeBytes { write(ends[1], $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else {
                close(ends[0])
                throw failure("writing a tool's input", errno)
            }
            written += count
        }
        return ends[0]
    }

    /// poll(2)'s timeout: what is left until `deadline`, at most a minute (a later poll goes on).
    private static func milliseconds(until deadline: ContinuousClock.Instant) -> Int32 {
        let left = ContinuousClock.now.duration(to: deadline).components
        return Int32(max(0, min(left.seconds * 1000 + left.attoseconds / 1_000_000_000_000_000 + 1, 60_000)))
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
