/// API paths with their variable parts named, so metrics have a bounded set
/// of labels: `/nodes/pve1/qemu/100/config` → `/nodes/{node}/qemu/{vmid}/config`.
public enum ProxmoxPath {
    /// The segment after each of these is a value, not part of the API's shape.
    static let valueAfter: [String: String] = [
        "nodes": "{node}", "qemu": "{vmid}", "lxc": "{vmid}", "storage": "{storage}", "content": "{volume}",
        "tasks": "{upid}", "snapshot": "{snapname}", "users": "{userid}", "token": "{tokenid}",
    ]

    public static func template(_ path: String) -> String {
        var out: [String] = []
        // Judged by what was written before, so a node named "storage" stays {node}.
        for segment in path.split(separator: "/", omittingEmptySubsequences: false).map(String.init) {
            if let previous = out.last, let placeholder = valueAfter[previous], !segment.isEmpty {
                out.append(placeholder)
            } else {
                out.append(segment)
            }
        }
        return out.joined(separator: "/")
    }
}
