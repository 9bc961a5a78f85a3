import FoundationEssentials
import TextSupport

/// Mounts through util-linux's mount(8), which knows every filesystem's
/// option syntax, and checks and grows filesystems with their own tools;
/// failures carry the tool's own message.
public struct Mounter: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        /// The tool was killed past its time limit: it may yet have done its work
        /// (a mount stuck in the kernel can still complete), so the outcome is uncertain.
        public var timedOut = false
    }

    let runner: any CommandRunning

    public init(runner: any CommandRunning = ProcessRunner()) {
        self.runner = runner
    }

    public func mount(_ source: String, at target: String, fsType: String?, options: [String]) async throws {
        var arguments: [String] = []
        if let fsType { arguments += ["-t", fsType] }
        if !options.isEmpty { arguments += ["-o", options.joined(separator: ",")] }
        try await run(arguments + [source, target], "mount \(source) at \(target)")
    }

    /// Bind-mounts `source` (a directory or a device node) onto `target`;
    /// read-only through a remount, as the kernel requires for binds.
    public func bind(_ source: String, at target: String, readonly: Bool) async throws {
        try await run(["--bind", source, target], "bind \(source) at \(target)")
        if readonly {
            try await run(["-o", "remount,bind,ro", target], "remount \(target) read-only")
        }
    }

    /// ext4 is checked and repaired before a read-write mount (fsck -p: 0 and 1 are fine).
    public func checkExt4(_ device: String) async throws {
        let result = try await runner.run("fsck.ext4", ["-p", device], timeout: ToolTimeout.check)
        guard result.status <= 1 else {
            throw Failure(description: "fsck.ext4 \(device) found errors it could not repair (exit \(result.status)): "
                + result.output.trimmed(), timedOut: result.timedOut)
        }
    }

    /// Grows a mounted filesystem to fill its (already larger) device, online:
    /// xfs through its mount point, ext4 through its device.
    public func grow(fsType: String, device: String, mountPoint: String) async throws {
        let (tool, arguments): (String, [String]) = switch fsType {
        case "xfs": ("xfs_growfs", ["-d", mountPoint])
        case "ext4", "ext3", "ext2": ("resize2fs", [device])
        default: throw Failure(description: "cannot grow a \(fsType) filesystem (xfs and ext4 can grow)")
        }
        let result = try await runner.run(tool, arguments, timeout: ToolTimeout.grow)
        guard result.succeeded else {
            throw Failure(description: "\(tool) \(arguments.joined(separator: " ")) failed (exit \(result.status)): "
                + result.output.trimmed(), timedOut: result.timedOut)
        }
    }

    private func run(_ arguments: [String], _ what: String) async throws {
        let result = try await runner.run("mount", arguments, timeout: ToolTimeout.mount)
        guard result.succeeded else {
            throw Failure(description: "\(what) failed: \(result.output.trimmed())",
                          timedOut: result.timedOut)
        }
    }
}
