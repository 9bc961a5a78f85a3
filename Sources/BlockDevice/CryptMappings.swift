import FoundationEssentials

/// An open dm-crypt mapping, as the kernel lists it under
/// `/sys/block/dm-N`: `dm/name` (what /dev/mapper calls it), `dm/uuid`
/// (`CRYPT-LUKS2-…` for cryptsetup's LUKS mappings) and `slaves/`, the one
/// device it decrypts.
public struct CryptMapping: Sendable, Equatable {
    /// The device-mapper name: /dev/mapper/`name`.
    public var name: String
    /// The kernel's name of the mapping, `dm-3`.
    public var kernelName: String
    /// "major:minor" of the mapping.
    public var number: String
    /// The kernel's name and number of the device underneath, `vdb` and "254:16".
    public var lowerName: String
    public var lowerNumber: String?
}

/// Lists dm-crypt mappings from the kernel's own sysfs: a mapping exists in
/// the kernel whatever sysfs tree the disks are looked up in (tests point
/// the disks at a tree of their own; the mappings are always real).
public struct CryptMappings: Sendable {
    public let sysRoot: String

    public init(sysRoot: String = "/sys") {
        self.sysRoot = sysRoot
    }

    /// The crypt mapping whose device number is `number`, if it is one.
    public func mapping(number: String) -> CryptMapping? {
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: sysRoot + "/dev/block/" + number),
              let kernelName = target.split(separator: "/").last, kernelName.hasPrefix("dm-") else { return nil }
        return mapping(kernelName: String(kernelName))
    }

    /// The crypt mapping /dev/mapper/`name`, if it is open.
    public func mapping(named name: String) -> CryptMapping? {
        all().first { $0.name == name }
    }

    /// Every crypt mapping that sits on the device `lowerNumber`.
    public func mappings(over lowerNumber: String) -> [CryptMapping] {
        all().filter { $0.lowerNumber == lowerNumber }
    }

    public func all() -> [CryptMapping] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: sysRoot + "/block")) ?? []
        return names.filter { $0.hasPrefix("dm-") }.sorted().compactMap(mapping(kernelName:))
    }

    func mapping(kernelName: String) -> CryptMapping? {
        let path = sysRoot + "/block/" + kernelName
        guard let uuid = KernelFile.value(path + "/dm/uuid"), uuid.hasPrefix("CRYPT-"),
              let name = KernelFile.value(path + "/dm/name"), let number = KernelFile.value(path + "/dev"),
              let lowers = try? FileManager.default.contentsOfDirectory(atPath: path + "/slaves"), lowers.count == 1 else { return nil }
        return CryptMapping(name: name, kernelName: kernelName, number: number, lowerName: lowers[0],
                            lowerNumber: KernelFile.value(path + "/slaves/" + lowers[0] + "/dev"))
    }
}
