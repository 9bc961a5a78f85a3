import Foundation
@testable import ProxmoxAPI
import Testing

/// The driver's own JSON reader (it replaced JSONSerialization to drop Foundation),
/// checked against JSONSerialization itself as the oracle.
@Suite struct JSONParserTests {
    /// What Foundation makes of the same bytes, in JSONValue's terms.
    static func oracle(_ text: String) throws -> JSONValue {
        func convert(_ any: Any) -> JSONValue {
            switch any {
            case let value as [String: Any]: .object(value.mapValues(convert))
            case let value as [Any]: .array(value.map(convert))
            case let value as String: .string(value)
            // Foundation on Linux answers true and false as NSNumber's boolean subclass.
            case let value as NSNumber where String(describing: type(of: any)) == "__NSCFBoolean": .bool(value.boolValue)
            case let value as NSNumber: .number(value.doubleValue)
            default: .null
            }
        }
        return convert(try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]))
    }

    @Test(arguments: [
        #"{"data":{"vmid":100,"name":"pve-worker-1","template":0,"lock":null,"running":true}}"#,
        #"[1, -2, 3.5, 1e3, -0.25E-2, 0, 12345678901234]"#,
        #"{"a": "tab\tquote\" slash\/ back\\ nl\n cr\r bs\b ff\f", "b": "\u00e9\u4e2d\ud83d\ude00"}"#,
        #"  {"nested": {"deeper": [[], {}, [{"x": [null, false]}]]}}  "#,
        #""just a string""#,
        #"{"digest":"6c1f0b3e","scsi1":"ceph:vm-9999-pvc-1,size=1G,serial=pvc-1"}"#,
        #"{"utf8": "ünïcödé ✓"}"#,
    ] as [String])
    func readsWhatFoundationReads(text: String) throws {
        #expect(try JSONValue.parse(Array(text.utf8)) == Self.oracle(text))
    }

    @Test(arguments: [
        "", "{", "[1,]", #"{"a" 1}"#, #"{"a":1,}"#, "tru", "nul", "01x", "1.", "-", "1e", #""unterminated"#,
        #""bad \q escape""#, #""\u12""#, "[1] 2", "{\"a\":\"line\nbreak\"}", #"{'single': 1}"#,
    ] as [String])
    func refusesWhatIsNotJSON(text: String) {
        #expect(throws: (any Error).self) { try JSONValue.parse(Array(text.utf8)) }
    }

    @Test func aHostileNestingIsRefusedNotACrash() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: (any Error).self) { try JSONValue.parse(Array(deep.utf8)) }
        let fine = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect((try? JSONValue.parse(Array(fine.utf8))) != nil)
    }

    @Test func serializedTextReadsBackTheSameAndSortsMembers() throws {
        let value: JSONValue = .object(["z": .number(3), "a": .array([.string("q\"\\\n\u{01}é"), .bool(true), .null, .number(2.5)]),
                                        "m": .object(["size": .number(1_073_741_824)])])
        let bytes = value.serialized()
        #expect(String(decoding: bytes, as: UTF8.self) == #"{"a":["q\"\\\n\u0001é",true,null,2.5],"m":{"size":1073741824},"z":3}"#)
        #expect(try JSONValue.parse(bytes) == value)
        #expect(try Self.oracle(String(decoding: bytes, as: UTF8.self)) == value)
    }
}
