import TextSupport
/// Formats a device only when it holds nothing libblkid recognises, the way
/// k8s mount-utils' SafeFormatAndMount does: a device with a filesystem or a
/// partition table is never formatted.
public struct SafeFormat: Sendable {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        /// The device holds something else: refused, untouched.
        case holdsData(device: String, found: String, wanted: String)
        /// Blank, but formatting was not allowed (a read-only stage).
        case blank(device: String, wanted: String)
        case tool(String)
        /// mkfs was killed past its time limit; the device may be half-formatted.
        case timedOut(String)
        case probe(String)

        public var description: String {
            switch self {
            case let .holdsData(device, found, wanted):
                "\(device) holds \(found), not \(wanted); refusing to format a device that holds data"
            case let .blank(device, wanted):
                "\(device) is blank; it is not formatted as \(wanted) because it is to be mounted read-only"
            case let .tool(message), let .timedOut(message), let .probe(message): message
            }
        }
    }

    let runner: any CommandRunning

    public init(runner: any CommandRunning = ProcessRunner()) {
        self.runner = runner
    }

    /// Ensures `device` carries `fsType` (xfs or ext4): formats a blank one,
    /// accepts one already formatted so, refuses anything else. Returns
    /// whether it formatted. With `mayFormat` false a blank device is refused too.
    @discardableResult
    public func ensureFilesystem(_ device: String, fsType: String, blockSize: Int? = nil, inodeSize: Int? = nil,
                                 mayFormat: Bool = true) async throws -> Bool {
        let found: ProbeResult
        do {
            found = try await BlockProbe.probeOffThread(device)
        } catch {
            throw Failure.probe(error.description)
        }
        if found.type == fsType, found.partitionTable == nil { return false }
        guard found.isBlank else {
            let what = [found.type.map { "a \($0) filesystem" }, found.partitionTable.map { "a \($0) partition table" }]
                .compactMap { $0 }.joined(separator: " and ")
            throw Failure.holdsData(device: device, found: what, wanted: fsType)
        }
        guard mayFormat else { throw Failure.blank(device: device, wanted: fsType) }
        let (tool, arguments) = Self.mkfs(fsType, device: device, blockSize: blockSize, inodeSize: inodeSize)
        let result = try await runner.run(tool, arguments, timeout: ToolTimeout.format)
        guard result.succeeded else {
            if result.timedOut { throw Failure.timedOut("\(tool) \(device): \(result.output)") }
            throw Failure.tool("\(tool) \(device) failed (exit \(result.status)): \(result.output.trimmed())")
        }
        return true
    }

    static func mkfs(_ fsType: String, device: String, blockSize: Int?, inodeSize: Int?) -> (String, [String]) {
        if fsType == "xfs" {
            var arguments = ["-q"]
            if let blockSize { arguments += ["-b", "size=\(blockSize)"] }
            if let inodeSize { arguments += ["-i", "size=\(inodeSize)"] }
            return ("mkfs.xfs", arguments + [device])
        }
        var arguments = ["-q"]
        if let blockSize { arguments += ["-b", String(blockSize)] }
        if let inodeSize { arguments += ["-I", String(inodeSize)] }
        return ("mkfs.\(fsType)", arguments + [device])
    }
}
