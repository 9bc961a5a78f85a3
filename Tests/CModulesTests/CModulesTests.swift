#if canImport(Glibc)
import Glibc
#endif
import CBlkid
import CCurl
import CNGHTTP2
import Testing

/// The C modules link, and their shims call through to the libraries.
@Suite struct CModulesTests {
    @Test func curlShimsSetOptionsOnARealHandle() throws {
        var error = [CChar](repeating: 0, count: 256)
        #expect(CCurl_load(&error, error.count) == 0, "\(error.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })")
        let handle = try #require(CCurl_easy_init())
        defer { CCurl_easy_cleanup(handle) }
        #expect(CCurl_easy_setopt_long(handle, CURLOPT_TIMEOUT_MS, 1500) == CURLE_OK)
        #expect(CCurl_easy_setopt_string(handle, CURLOPT_URL, "https://pve.example:8006/api2/json/version") == CURLE_OK)
        // An unknown option is refused by libcurl itself, proving the call got there.
        #expect(CCurl_easy_setopt_long(handle, CURLoption(rawValue: 99_999), 1) != CURLE_OK)
        let version = String(cString: CCurl_version())
        #expect(version.hasPrefix("libcurl/"))
    }

    @Test func blkidProbesAnEmptyFileAsBlank() throws {
        var template = Array("/tmp/cblkid-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { unlink(path) }
        #expect(ftruncate(fd, 1 << 20) == 0)
        close(fd)
        let probe = try #require(blkid_new_probe_from_filename(path))
        defer { blkid_free_probe(probe) }
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_enable_partitions(probe, 1)
        // 1: nothing found — a zeroed file carries no signature.
        #expect(blkid_do_safeprobe(probe) == 1)
    }

    @Test func nghttp2IsTheVersionWeBuildAgainst() throws {
        let info = try #require(nghttp2_version(0))
        #expect(info.pointee.version_num >= 0x012F00, "nghttp2 1.47 or later")
    }
}
