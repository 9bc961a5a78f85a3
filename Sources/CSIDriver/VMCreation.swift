import ProxmoxAPI
import UnaryGRPC

extension ProxmoxVolumes {
    /// Starts creating one of the driver's record VMs (stopped, smallest
    /// size, never started: they only carry a name, a description and disks)
    /// under a fresh vmid; returns the vmid and the create task (nil when
    /// Proxmox answered synchronously).
    ///
    /// Proxmox's nextid answers the lowest free vmid, so concurrent creators
    /// all hear the same one and all but one fail. The driver's own creations
    /// therefore take their vmids one at a time — only the request that
    /// reserves the vmid is serialized, not the task that follows. Another
    /// tool taking the vmid between nextid and create makes it ask again.
    func startCreatingVM(cluster: String, node: String, name: String, description: String, disks: [(String, String)] = [],
                         what: String) async throws -> (vmid: Int, upid: String?) {
        let client = try client(cluster)
        let settings = [("name", name), ("memory", "64"), ("cores", "1"), ("description", description)] + disks
        return try await vmLocks.run("\(cluster)/new-vmid") {
            for _ in 0..<5 {
                let vmid = try await client.nextVMID()
                self.creating.withLock { _ = $0.insert("\(cluster)/\(vmid)") }
                do {
                    let upid = try await client.startCreateVM(node: node, vmid: vmid, settings: settings)
                    self.invalidate(cluster)
                    return (vmid, upid)
                } catch let error as ProxmoxError where error.description.contains("already exists") {
                    self.creating.withLock { _ = $0.remove("\(cluster)/\(vmid)") }
                    continue
                } catch {
                    self.creating.withLock { _ = $0.remove("\(cluster)/\(vmid)") }
                    throw error
                }
            }
            throw RPCError(.unavailable, "could not create \(what): vmids kept being taken by others")
        }
    }

    /// Creates a record VM without disks and waits for the create task.
    func createVM(cluster: String, node: String, name: String, description: String, what: String) async throws -> Int {
        let (vmid, upid) = try await startCreatingVM(cluster: cluster, node: node, name: name, description: description, what: what)
        defer { creating.withLock { _ = $0.remove("\(cluster)/\(vmid)") } }
        if let upid { _ = try await client(cluster).waitForTask(upid) }
        return vmid
    }
}
