@testable import CSIDriver
import Testing

/// The driver's own reader for its config's YAML (it replaced Yams to drop Foundation).
@Suite struct ConfigYAMLTests {
    func parse(_ text: String) throws -> YAMLNode { try #require(try YAMLNode.parse(text)) }

    func plain(_ node: YAMLNode) -> Any {
        if let pairs = node.mapping { return pairs.map { "\($0.key.string!)=\(plain($0.value))" }.joined(separator: ";") }
        if let items = node.sequence { return "[" + items.map { "\(plain($0))" }.joined(separator: ",") + "]" }
        return node.scalar!
    }

    @Test func readsBlocksSequencesAndCompactItems() throws {
        let root = try parse("""
        ---
        # a comment line
        clusters:
        - url: https://pve:8006/api2/json   # trailing comment
          token_id: "user!token # not a comment"
          token_secret: 'it''s'
        -   region: two
        profiles:
          fast:
            storage: local-lvm
          empty: {}
        list: [a, "b, c", 3]
        """)
        #expect("\(plain(root))" == "clusters=[url=https://pve:8006/api2/json;token_id=user!token # not a comment;token_secret=it's,region=two];"
            + "profiles=fast=storage=local-lvm;empty=;list=[a,b, c,3]")
        let cluster = try #require(root.mapping?[0].value.sequence?[0])
        #expect(cluster.line == 4 && cluster.mapping?[1].value.line == 5)
        #expect(root.mapping?[1].value.mapping?[1].value.mapping?.isEmpty == true)
    }

    @Test func scalarsResolveAsYAMLLibrariesDo() throws {
        let root = try parse("a: yes\nb: Off\nc: 0x1F\nd: -1_000\ne: 2.5\nf: \"30\"\ng:\n")
        let values = try #require(root.mapping).map(\.value)
        #expect(values[0].bool == true && values[1].bool == false)
        #expect(values[2].int == 31 && values[3].int == -1000 && values[4].float == 2.5 && values[5].int == 30)
        #expect(values[6].scalar == "" && values[0].int == nil)
    }

    @Test func blockScalarsKeepOrFoldTheirLines() throws {
        let root = try parse("literal: |\n  one\n    two\n\nfolded: >-\n  a\n  b\n\n  c\nafter: x\n")
        let values = try #require(root.mapping).map(\.value)
        #expect(values[0].scalar == "one\n  two\n")
        #expect(values[1].scalar == "a b\nc")
        #expect(values[2].scalar == "x")
    }

    @Test func windowsLineEndingsAndEscapesAreRead() throws {
        let root = try parse("a: \"x\\ty\\u00e9\"\r\nb: plain\r\n")
        #expect(root.mapping?.map(\.value.scalar) == ["x\tyé", "plain"])
    }

    @Test(arguments: [
        ("a: 1\n\tb: 2", "line 2: a tab in the indentation"),
        ("a: &anchor 1\nb: *anchor", "line 1: YAML anchors, aliases and tags are not supported"),
        ("a: 1\n---\nb: 2", "line 2: a second YAML document"),
        ("a:\n  b: 1\n   c: 2", "line 3: unexpected indentation"),
        ("a: [1, 2", "line 1: a [ list does not end on its line"),
        ("a: \"open", "line 1: a quoted string does not end on its line"),
        ("a: 1\n  - b", "line 2: unexpected indentation"),
        ("- a\nb: 1", "line 2: unexpected indentation"),
    ] as [(String, String)])
    func refusesWhatItCannotReadNamingTheLine(text: String, expected: String) {
        do {
            _ = try YAMLNode.parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect("\(error)".hasPrefix(expected), "\(error)")
        }
    }

    @Test func anEmptyDocumentIsNil() throws {
        #expect(try YAMLNode.parse("") == nil)
        #expect(try YAMLNode.parse("# only a comment\n\n") == nil)
    }
}
