/// A Proxmox task id: `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`
/// (pve-common PVE/Tools.pm upid_decode).
public enum UPID {
    /// The node that runs the task: its status is asked of that node.
    public static func node(of upid: String) -> String {
        upid.split(separator: ":", omittingEmptySubsequences: false).dropFirst().first.map(String.init) ?? ""
    }

    /// The task's type (`qmcreate`, `imgdel`): "" when the id has none.
    public static func type(of upid: String) -> String {
        let fields = upid.split(separator: ":", omittingEmptySubsequences: false)
        return fields.count > 5 ? String(fields[5]) : ""
    }
}
