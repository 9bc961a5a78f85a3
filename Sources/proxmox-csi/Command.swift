#if canImport(Glibc)
import Glibc
#endif
import CommandLineOptions
import CSIDriver
import Logging
import Synchronization
import UnaryGRPC

/// A subcommand: built from its parsed options (throwing UsageError for a bad value), then run.
protocol DriverCommand: Sendable {
    static var spec: CommandSpec { get }
    init(_ options: ParsedOptions) throws
    func run() async throws
}

let program = CommandLineProgram(
    name: "proxmox-csi", abstract: "Kubernetes CSI driver for Proxmox VE.",
    commands: [Serve.spec, Check.spec, MoveVolume.spec], defaultCommand: Serve.spec.name)

/// Usage and configuration errors end with one line on stderr and exit code 2; a failure
/// that is not the user's input exits 1; help and --version print and exit 0.
// The main thread waits while the command runs on the cooperative pool: Swift's async main
// would end it with pthread_exit, whose forced unwind walks the binary's unwind tables
// (about 0.7 MiB that then stays resident for nothing).
@main
enum ProxmoxCSI {
    static func main() {
        do {
            switch try program.parse(Array(CommandLine.arguments.dropFirst())) {
            case .help(let text):
                print(text, terminator: "")
            case .version:
                print(DriverInfo.version)
            case .run(let options):
                let commands: [any DriverCommand.Type] = [Serve.self, Check.self, MoveVolume.self]
                let type = commands.first { $0.spec.name == options.command }!
                try runOnThePool(try type.init(options))
            }
            Glibc.exit(0)
        } catch let failure as ExitStatus {
            Glibc.exit(failure.code)
        } catch {
            let message = "\(error)".split(separator: "\n").first.map(String.init) ?? ""
            FileHandleStandardError.write("proxmox-csi: \(message)\n")
            Glibc.exit(error is RuntimeFailure ? 1 : 2)
        }
    }
}

/// Runs an async command to its end on the cooperative pool; the calling thread waits.
func runOnThePool(_ command: any DriverCommand) throws {
    let outcome = Mutex<Result<Void, any Error>?>(nil)
    let finished = OneShotSignal()
    Task.detached {
        let result: Result<Void, any Error>
        do { try await command.run(); result = .success(()) } catch { result = .failure(error) }
        outcome.withLock { $0 = result }
        finished.signal()
    }
    finished.wait()
    try outcome.withLock { $0 }!.get()
}

/// A one-shot signal between threads (a POSIX semaphore).
final class OneShotSignal: @unchecked Sendable {
    private let semaphore = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    init() { sem_init(semaphore, 0, 0) }
    deinit { sem_destroy(semaphore); semaphore.deallocate() }
    func signal() { sem_post(semaphore) }
    func wait() { while sem_wait(semaphore) != 0 && errno == EINTR {} }
}

/// The config a subcommand names; a config that does not load is the user's input to fix (exit 2).
func loadConfig(_ path: String) throws -> DriverConfig {
    do {
        return try DriverConfig.load(path: path)
    } catch {
        throw UsageError("\(error)")
    }
}

/// A command's verdict that is not an error message (check found problems: exit 1).
struct ExitStatus: Error {
    let code: Int32
}

/// An error that is not the user's input (the socket cannot be bound, ...): exit 1.
struct RuntimeFailure: Error, CustomStringConvertible {
    let description: String
}

enum FileHandleStandardError {
    static func write(_ text: String) {
        var text = text
        text.withUTF8 { bytes in _ = Glibc.write(2, bytes.baseAddress, bytes.count) }
    }
}
