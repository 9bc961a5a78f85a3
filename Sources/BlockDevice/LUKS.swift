import TextSupport
/// LUKS2 through cryptsetup(8). The passphrase reaches cryptsetup only on
/// its standard input (`--key-file=-`, read to the end, so every byte counts,
/// a trailing newline included): never in argv, where any process can read
/// it, nor in the environment. proxmox-csi-plugin hands cryptsetup the
/// secret's bytes the same way, so volumes it encrypted open here unchanged.
public struct LUKS: Sendable {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        /// No key slot opens with this passphrase: nothing was changed.
        case wrongPassphrase(device: String)
        /// The mapping is in use (a mounted filesystem, an open block target).
        case busy(name: String, output: String)
        case tool(String)
        case timedOut(String)

        public var description: String {
            switch self {
            case let .wrongPassphrase(device): "the passphrase opens no key slot of the LUKS header on \(device)"
            case let .busy(name, output): "the encrypted mapping \(name) is still in use: \(output)"
            case let .tool(message), let .timedOut(message): message
            }
        }
    }

    /// How long key derivation takes is cryptsetup's default (2 s of Argon2id,
    /// measured on this machine); its memory is bounded so a small node is not
    /// asked for cryptsetup's default of up to 1 GiB at every stage: 64 MiB,
    /// RFC 9106's second recommended Argon2id setting.
    public static let pbkdfMemoryKiB = 65_536
    /// The plugin's cipher (aes-xts-plain64, 512-bit key: AES-256 in XTS), cryptsetup's LUKS2 default.
    public static let cipher = "aes-xts-plain64"

    /// libblkid's TYPE of a LUKS header.
    public static let signature = "crypto_LUKS"
    /// The LUKS2 label of headers this driver writes: a block stage without a
    /// passphrase tells its own encrypted volumes from a pod's own LUKS by it.
    public static let label = "proxmox-csi"

    let runner: any CommandRunning

    public init(runner: any CommandRunning = ProcessRunner()) {
        self.runner = runner
    }

    /// Writes a LUKS2 header whose one key slot opens with `passphrase`. Only
    /// for a blank device: the caller has probed it.
    public func format(_ device: String, passphrase: SecretBytes) async throws {
        try await run(["luksFormat", "--batch-mode", "--type", "luks2", "--label", Self.label, "--cipher", Self.cipher, "--key-size", "512",
                       "--pbkdf", "argon2id", "--pbkdf-memory", String(Self.pbkdfMemoryKiB), "--key-file=-", device],
                      input: passphrase, device: device, timeout: ToolTimeout.format)
    }

    /// Opens the LUKS device as /dev/mapper/`name`.
    public func open(_ device: String, as name: String, passphrase: SecretBytes, readonly: Bool) async throws {
        try await run(["open", "--type", "luks"] + (readonly ? ["--readonly"] : []) + ["--key-file=-", device, name],
                      input: passphrase, device: device, timeout: ToolTimeout.mount)
    }

    /// Whether `passphrase` opens a key slot of the header on `device`, opening nothing
    /// (wrongPassphrase when it does not).
    public func test(_ device: String, passphrase: SecretBytes) async throws {
        try await run(["open", "--test-passphrase", "--type", "luks", "--key-file=-", device],
                      input: passphrase, device: device, timeout: ToolTimeout.mount)
    }

    /// Grows an open mapping to fill its (already larger) device. LUKS2 keeps
    /// the volume key in the kernel keyring, so resizing asks for the passphrase again.
    public func resize(_ name: String, passphrase: SecretBytes) async throws {
        try await run(["resize", "--key-file=-", name], input: passphrase, device: "/dev/mapper/" + name, timeout: ToolTimeout.grow)
    }

    /// Closes /dev/mapper/`name` (cryptsetup also clears the volume key from the kernel).
    public func close(_ name: String) async throws {
        try await run(["close", name], input: nil, device: "/dev/mapper/" + name, timeout: ToolTimeout.mount)
    }

    private func run(_ arguments: [String], input: SecretBytes?, device: String, timeout: Double) async throws {
        let result = try await runner.run("cryptsetup", arguments, input: input, timeout: timeout)
        guard !result.succeeded else { return }
        let output = result.output.trimmed()
        let command = "cryptsetup \(arguments.first ?? "") \(device)"
        if result.timedOut { throw Failure.timedOut("\(command): \(output)") }
        // cryptsetup(8) EXIT STATUS: 2 no permission (bad passphrase), 5 device already exists or device is busy.
        switch result.status {
        case 2 where input != nil: throw Failure.wrongPassphrase(device: device)
        case 5 where arguments.first == "close": throw Failure.busy(name: String(device.dropFirst("/dev/mapper/".count)), output: output)
        default: throw Failure.tool("\(command) failed (exit \(result.status)): \(output)")
        }
    }
}
