import ProxmoxAPI

extension ProxmoxVolumes {
    /// Creates one of the driver's record VMs (stopped, smallest size, never
    /// started: they only carry a name and a description; copies are added
    /// later) under a fresh vmid, and waits for the create task.
    ///
    /// Proxmox's nextid answers the lowest free vmid, so concurrent creators
    /// all hear the same one and all but one fail. The driver's own creations
    /// therefore take their vmids one at a time — only the request that
    /// reserves the vmid is serialized, not the task that follows. Another
    /// tool taking the vmid between nextid and create makes it ask again.
    /// While it runs, the vmid is in `creating`: qemu-server writes the name
    /// only when the create ends, and an unnamed VM being created that this
    /// process is not making may be an earlier process's copy (CopyVMs).
    ///
    /// `disks` are drives of existing volumes the VM names from the start
    /// (create_vm's create_disks takes an existing volid as update_vm does).
    package func createVM(cluster: String, node: String, name: String, description: String, disks: [(String, String)] = [],
                          what: String) async throws -> Int {
        let client = try client(cluster)
        // Tagged with its name: cluster resources show tags current, names only after pvestatd's next round.
        let settings = [("name", name), ("memory", "64"), ("cores", "1"), ("description", description), ("tags", name)] + disks
        let (vmid, upid) = try await vmLocks.run("\(cluster)/new-vmid") {
            for _ in 0..<5 {
                let vmid = try await client.nextVMID()
                self.creating.withLock { _ = $0.insert("\(cluster)/\(vmid)") }
                self.forgetName(cluster: cluster, vmid: vmid)
                do {
                    let upid = try await client.startCreateVM(node: node, vmid: vmid, settings: settings)
                    self.invalidate(cluster)
                    return (vmid, upid)
                } catch {
                    self.creating.withLock { _ = $0.remove("\(cluster)/\(vmid)") }
                    if let error = error as? ProxmoxError, error.description.contains("already exists") { continue }
                    throw error
                }
            }
            throw DomainError.notYet("could not create \(what): vmids kept being taken by others")
        }
        defer { creating.withLock { _ = $0.remove("\(cluster)/\(vmid)") } }
        if let upid { _ = try await client.waitForTask(upid) }
        invalidate(cluster)  // resources read during the create show it unnamed and untagged
        rememberName(name, cluster: cluster, node: node, vmid: vmid, tags: [name])
        return vmid
    }

    /// A VM being created or cloned has no name (create_vm and clone_vm write it last): one
    /// this process is not making may be `name` from an attempt of a controller that died,
    /// and making `name` now would make its twin. Busy until it has its name.
    package func requireNoUnnamedCreation(_ cluster: String, mayBe name: String) async throws {
        let locked = try await vms(cluster, fresh: true).filter { $0.lock == "create" || $0.lock == "clone" }
        let ours = creating.withLock { $0 }  // read after the listing: our creations are in it by then
        if let other = locked.first(where: { !ours.contains("\(cluster)/\($0.vmid)") }) {
            throw DomainError.busy("VM \(other.vmid) is being created and has no name yet; it may be \(name) "
                + "from an earlier attempt: try again shortly")
        }
    }
}
