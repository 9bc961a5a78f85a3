@testable import BlockDevice
import Foundation
import Testing

/// The probe skips libblkid's ZFS prober only where all four ZFS label areas are zero.
@Suite struct ZFSLabelsTests {
    let kib = 1 << 10

    /// A file of `bytes` zeros with one byte set at each of `marks`; whether its label areas read as zero.
    func labelAreasZero(bytes: Int, marks: [Int] = []) throws -> Bool {
        let path = try scratch("zfs") + "/disk.img"
        try sparseFile(path, bytes: Int64(bytes))
        let handle = try #require(FileHandle(forWritingAtPath: path))
        for mark in marks {
            try handle.seek(toOffset: UInt64(mark))
            handle.write(Data([1]))
        }
        try handle.close()
        let device = open(path, O_RDONLY)
        defer { close(device) }
        return ZFSLabels.areZero(device, size: bytes)
    }

    @Test func aBlankDiskHasNoLabels() throws {
        #expect(try labelAreasZero(bytes: 8 << 20))
    }

    @Test func anythingInAnyOfTheFourLabelsCounts() throws {
        let size = 8 << 20
        for mark in [0, 300 * kib, size - 512 * kib, size - 1] {
            #expect(try !labelAreasZero(bytes: size, marks: [mark]), "byte at \(mark)")
        }
    }

    /// The end labels sit at the size rounded down to 256 KiB: on an odd-sized disk they
    /// start before the last 512 KiB, and the tail past the rounding holds none.
    @Test func endLabelsFollowTheRoundedDownSize() throws {
        let size = (8 << 20) + 100 * kib
        let aligned = 8 << 20
        #expect(try !labelAreasZero(bytes: size, marks: [aligned - 512 * kib]))
        #expect(try labelAreasZero(bytes: size, marks: [aligned + 50 * kib, 4 << 20]))
    }

    @Test func aDiskTooSmallForFourLabelsIsLeftToLibblkid() throws {
        #expect(try !labelAreasZero(bytes: 768 * kib))
    }
}
