/// Facts about this build of the driver.
public enum DriverInfo {
    /// Bumped on release; reported by GetPluginInfo and `--version`.
    public static let version = "0.1.0"
    /// The name kubelet and the sidecars know the driver by, unless `--driver-name` says otherwise.
    public static let defaultName = "proxmox-csi"

    /// The spec's rule for plugin names: at most 63 characters, alphanumerics
    /// at both ends, alphanumerics, `-` and `.` between. Returns the problem,
    /// or nil when the name is valid.
    public static func problem(withName name: String) -> String? {
        func isAlphanumeric(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
        }
        let bytes = Array(name.utf8)
        if bytes.isEmpty { return "it is empty" }
        if bytes.count > 63 { return "it is \(bytes.count) characters long; the limit is 63" }
        if !isAlphanumeric(bytes.first!) || !isAlphanumeric(bytes.last!) {
            return "it must begin and end with a letter or digit"
        }
        if let bad = bytes.first(where: { !isAlphanumeric($0) && $0 != UInt8(ascii: "-") && $0 != UInt8(ascii: ".") }) {
            return "it contains \"\(String(decoding: [bad], as: UTF8.self))\"; only letters, digits, '-' and '.' are allowed"
        }
        return nil
    }
}

/// Which services this process serves.
public enum DriverMode: String, Sendable, CaseIterable {
    /// The Deployment beside the sidecars: Identity + Controller.
    case controller
    /// The DaemonSet on every Kubernetes node: Identity + Node.
    case node
    /// Both, in one process (demo, conformance runs).
    case all

    public var servesController: Bool { self != .node }
    public var servesNode: Bool { self != .controller }
}
