#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CSIDriver
import Logging
import UnaryGRPC

@main
struct ProxmoxCSI: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxmox-csi",
        abstract: "Kubernetes CSI driver for Proxmox VE.",
        version: DriverInfo.version,
        subcommands: [Serve.self, Check.self, MoveVolume.self],
        defaultSubcommand: Serve.self
    )

    /// Usage and configuration errors end with one line on stderr and exit
    /// code 2; help and --version print as usual and exit 0.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if let exit = error as? ExitCode, exit != .validationFailure {
                Glibc.exit(exit.rawValue)
            }
            if code == .success {
                print(fullMessage(for: error))
                Glibc.exit(0)
            }
            let message = self.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandleStandardError.write("proxmox-csi: \(message)\n")
            Glibc.exit(error is RuntimeFailure ? 1 : 2)
        }
    }
}

/// The config a subcommand names; a config that does not load is the user's input to fix (exit 2).
func loadConfig(_ path: String) throws -> DriverConfig {
    do {
        return try DriverConfig.load(path: path)
    } catch {
        throw ValidationError("\(error)")
    }
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
