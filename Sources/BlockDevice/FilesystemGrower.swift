/// Grows a mounted filesystem to fill its (already larger) device, online.
public struct FilesystemGrower: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    let runner: any CommandRunning

    public init(runner: any CommandRunning = ProcessRunner()) {
        self.runner = runner
    }

    /// xfs grows through its mount point, ext4 through its device; both while mounted.
    public func grow(fsType: String, device: String, mountPoint: String) async throws {
        let (tool, arguments): (String, [String]) = switch fsType {
        case "xfs": ("xfs_growfs", ["-d", mountPoint])
        case "ext4", "ext3", "ext2": ("resize2fs", [device])
        default: throw Failure(description: "cannot grow a \(fsType) filesystem (xfs and ext4 can grow)")
        }
        let result = try await runner.run(tool, arguments)
        guard result.succeeded else {
            throw Failure(description: "\(tool) \(arguments.joined(separator: " ")) failed (exit \(result.status)): "
                + result.output.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}
