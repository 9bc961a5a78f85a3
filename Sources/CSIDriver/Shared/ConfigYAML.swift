/// The YAML a driver config is written in: block mappings and sequences,
/// plain, quoted and block (`|`, `>`) scalars, one-line flow collections
/// (`[a, b]`, `{}`), comments and a leading `---`. Anchors, aliases, tags and
/// several documents are refused by name rather than misread.
///
/// Written here, not taken from a YAML library: the one this driver used
/// (Yams) links the whole of Foundation and ICU, megabytes of memory on
/// every node for a file only the controller reads.
struct YAMLNode {
    enum Kind {
        case scalar(String, quoted: Bool)
        case mapping([(key: YAMLNode, value: YAMLNode)])
        case sequence([YAMLNode])
    }

    let kind: Kind
    /// 1-based, as an editor shows it.
    let line: Int

    struct Failure: Error, CustomStringConvertible {
        let line: Int
        let problem: String
        var description: String { "line \(line): \(problem)" }
    }

    /// The text of a scalar (nil for a mapping or sequence).
    var scalar: String? {
        if case let .scalar(text, _) = kind { return text }
        return nil
    }

    var string: String? { scalar }

    var mapping: [(key: YAMLNode, value: YAMLNode)]? {
        if case let .mapping(pairs) = kind { return pairs }
        return nil
    }

    var sequence: [YAMLNode]? {
        if case let .sequence(items) = kind { return items }
        return nil
    }

    /// YAML 1.1's spellings, as YAML libraries resolve a config's `true`.
    var bool: Bool? {
        switch scalar {
        case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON": true
        case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF": false
        default: nil
        }
    }

    var int: Int? {
        guard var text = scalar?.filter({ $0 != "_" }), !text.isEmpty else { return nil }
        var sign = 1
        if text.hasPrefix("-") || text.hasPrefix("+") {
            sign = text.hasPrefix("-") ? -1 : 1
            text.removeFirst()
        }
        let value = text.hasPrefix("0x") ? Int(text.dropFirst(2), radix: 16)
            : text.hasPrefix("0o") ? Int(text.dropFirst(2), radix: 8) : Int(text)
        return value.map { $0 * sign }
    }

    var float: Double? {
        guard let text = scalar, let value = Double(text.filter { $0 != "_" }), value.isFinite else { return nil }
        return value
    }

    /// The document's root; nil for an empty document.
    static func parse(_ text: String) throws(Failure) -> YAMLNode? {
        var reader = YAMLBlockReader(lines: try YAMLLine.split(text))
        return try reader.document()
    }
}

/// One line that holds something: its indentation and its content without a trailing comment.
struct YAMLLine {
    var number: Int
    var indent: Int
    var content: Substring

    static func split(_ text: String) throws(YAMLNode.Failure) -> [YAMLLine] {
        var lines: [YAMLLine] = []
        var number = 0
        // By Character: "\r\n" is one Character, a newline like "\n".
        for line in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            number += 1
            let indent = line.prefix { $0 == " " }.count
            let rest = line.dropFirst(indent)
            if rest.first == "\t" { throw YAMLNode.Failure(line: number, problem: "a tab in the indentation (YAML indents with spaces)") }
            lines.append(YAMLLine(number: number, indent: indent, content: rest))
        }
        return lines
    }

    /// `---` or `...` at the left margin: another document begins or this one ends.
    var isDocumentMarker: Bool {
        indent == 0 && (content == "---" || content == "..." || content.hasPrefix("--- "))
    }

    var isBlank: Bool {
        let stripped = YAMLScalars.withoutComment(content)
        return stripped.allSatisfy { $0 == " " || $0 == "\t" }
    }
}

/// Reads block structure: which lines belong to which mapping or sequence, by indentation.
struct YAMLBlockReader {
    private var lines: [YAMLLine]
    private var at = 0

    init(lines: [YAMLLine]) { self.lines = lines }

    private func fail(_ line: Int, _ problem: String) -> YAMLNode.Failure { YAMLNode.Failure(line: line, problem: problem) }

    /// The next line that holds something, with its comment cut off.
    private mutating func peek() -> YAMLLine? {
        while at < lines.count {
            if lines[at].isBlank { at += 1; continue }
            var line = lines[at]
            line.content = YAMLScalars.withoutComment(line.content)
            while line.content.last == " " || line.content.last == "\t" { line.content.removeLast() }
            return line
        }
        return nil
    }

    mutating func document() throws(YAMLNode.Failure) -> YAMLNode? {
        if let first = peek(), first.indent == 0, first.content == "---" || first.content.hasPrefix("--- ") {
            let rest = first.content.dropFirst(3).drop { $0 == " " }
            if rest.isEmpty { at += 1 } else { lines[at].content = rest; lines[at].indent = 4 }
        }
        guard let first = peek() else { return nil }
        let root = try node(at: first.indent, line: first.number)
        if let next = peek() {
            if next.isDocumentMarker {
                throw fail(next.number, "a second YAML document: the config is one document")
            }
            throw fail(next.number, "unexpected indentation")
        }
        return root
    }

    /// The block node starting at the next line, which is indented exactly `indent`.
    private mutating func node(at indent: Int, line: Int) throws(YAMLNode.Failure) -> YAMLNode {
        guard let first = peek(), first.indent == indent else {
            return YAMLNode(kind: .scalar("", quoted: false), line: line)
        }
        if first.content == "-" || first.content.hasPrefix("- ") { return try sequence(at: indent) }
        if try YAMLScalars.splitKey(first.content, line: first.number) != nil { return try mapping(at: indent) }
        at += 1
        return try YAMLScalars.inline(first.content, line: first.number)
    }

    private mutating func sequence(at indent: Int) throws(YAMLNode.Failure) -> YAMLNode {
        let start = peek()!.number
        var items: [YAMLNode] = []
        while let line = peek(), line.indent == indent, line.content == "-" || line.content.hasPrefix("- ") {
            let rest = line.content.dropFirst(1).drop { $0 == " " }
            if rest.isEmpty {
                at += 1
                items.append(try nested(under: indent, line: line.number, allowSequenceAtSameIndent: false))
            } else {
                // "- key: value": the item is a block that starts at the column of `key`.
                lines[at].indent = indent + (line.content.count - rest.count)
                lines[at].content = rest
                items.append(try node(at: lines[at].indent, line: line.number))
            }
        }
        if let line = peek(), line.indent > indent { throw fail(line.number, "unexpected indentation") }
        return YAMLNode(kind: .sequence(items), line: start)
    }

    private mutating func mapping(at indent: Int) throws(YAMLNode.Failure) -> YAMLNode {
        let start = peek()!.number
        var pairs: [(key: YAMLNode, value: YAMLNode)] = []
        while let line = peek(), line.indent == indent, !line.isDocumentMarker {
            guard let (key, value) = try YAMLScalars.splitKey(line.content, line: line.number) else {
                throw fail(line.number, "expected `key: value` (a mapping's entries line up)")
            }
            at += 1
            let keyNode = YAMLNode(kind: .scalar(key, quoted: false), line: line.number)
            if value.isEmpty {
                pairs.append((keyNode, try nested(under: indent, line: line.number, allowSequenceAtSameIndent: true)))
            } else if let style = value.first, style == "|" || style == ">" {
                pairs.append((keyNode, try blockScalar(value, under: indent, line: line.number)))
            } else {
                pairs.append((keyNode, try YAMLScalars.inline(value, line: line.number)))
            }
        }
        if let line = peek(), line.indent > indent { throw fail(line.number, "unexpected indentation") }
        return YAMLNode(kind: .mapping(pairs), line: start)
    }

    /// A key's or a dash's value on the lines below; a sequence may sit at the key's own
    /// indentation (`key:` then `- item` under the k), as YAML allows.
    private mutating func nested(under indent: Int, line: Int, allowSequenceAtSameIndent: Bool) throws(YAMLNode.Failure) -> YAMLNode {
        guard let next = peek() else { return YAMLNode(kind: .scalar("", quoted: false), line: line) }
        if next.indent > indent { return try node(at: next.indent, line: next.number) }
        if allowSequenceAtSameIndent, next.indent == indent, next.content == "-" || next.content.hasPrefix("- ") {
            return try sequence(at: indent)
        }
        return YAMLNode(kind: .scalar("", quoted: false), line: line)
    }

    /// `|` keeps line breaks, `>` folds them into spaces; `-` strips the final one, `+` keeps all.
    private mutating func blockScalar(_ header: Substring, under indent: Int, line: Int) throws(YAMLNode.Failure) -> YAMLNode {
        let folded = header.first == ">"
        let chomp = header.dropFirst()
        guard chomp.isEmpty || chomp == "-" || chomp == "+" else {
            throw fail(line, "block scalar header \(header) is not supported (use |, |-, |+, > , >- or >+)")
        }
        var body: [Substring] = []
        var blockIndent: Int?
        while at < lines.count {
            let raw = lines[at]
            if raw.content.allSatisfy({ $0 == " " }) { body.append(""); at += 1; continue }
            guard raw.indent > indent else { break }
            let column = blockIndent ?? raw.indent
            blockIndent = column
            guard raw.indent >= column else { throw fail(raw.number, "a block scalar's lines must keep its indentation") }
            body.append(Substring(String(repeating: " ", count: raw.indent - column)) + raw.content)
            at += 1
        }
        var trailing = 0
        while body.last == "" { body.removeLast(); trailing += 1 }
        var text = folded ? body.split(separator: "", omittingEmptySubsequences: false)
            .map { $0.joined(separator: " ") }.joined(separator: "\n") : body.joined(separator: "\n")
        switch chomp {
        case "-": break
        case "+": text += String(repeating: "\n", count: trailing + 1)
        default: if !body.isEmpty { text += "\n" }
        }
        return YAMLNode(kind: .scalar(text, quoted: true), line: line)
    }
}

/// Scalars and one-line flow collections.
enum YAMLScalars {
    /// The content before a `#` comment: `#` at the start or after a space, outside quotes.
    static func withoutComment(_ content: Substring) -> Substring {
        var quote: Character?
        var previous: Character = " "
        var index = content.startIndex
        while index < content.endIndex {
            let character = content[index]
            if let open = quote {
                if character == open {
                    // '' inside single quotes is an escaped quote, not the end.
                    let next = content.index(after: index)
                    if open == "'", next < content.endIndex, content[next] == "'" { index = content.index(after: next); continue }
                    quote = nil
                } else if open == "\"", character == "\\" {
                    index = content.index(after: index)
                    if index < content.endIndex { index = content.index(after: index) }
                    continue
                }
            } else if character == "#", previous == " " || previous == "\t" {
                return content[..<index]
            } else if (character == "\"" || character == "'"), previous == " " || previous == "[" || previous == "{"
                        || previous == "," || previous == ":" || index == content.startIndex {
                quote = character
            }
            previous = character
            index = content.index(after: index)
        }
        return content
    }

    /// `key: value` split at the first `: ` (or a final `:`) outside quotes; nil when the line is no mapping entry.
    static func splitKey(_ content: Substring, line: Int) throws(YAMLNode.Failure) -> (String, Substring)? {
        if let quote = content.first, quote == "\"" || quote == "'" {
            let (key, rest) = try quoted(content, line: line)
            let after = rest.drop { $0 == " " }
            guard after.first == ":" else { return nil }
            return (key, after.dropFirst().drop { $0 == " " })
        }
        guard let first = content.first, !"[{&*!|>%@`".contains(first) else { return nil }
        var index = content.startIndex
        while index < content.endIndex {
            if content[index] == ":" {
                let next = content.index(after: index)
                if next == content.endIndex || content[next] == " " {
                    var key = content[..<index]
                    while key.last == " " { key.removeLast() }
                    return (String(key), content[next...].drop { $0 == " " })
                }
            }
            index = content.index(after: index)
        }
        return nil
    }

    /// A value written on the key's own line: plain, quoted, or a flow collection.
    static func inline(_ text: Substring, line: Int) throws(YAMLNode.Failure) -> YAMLNode {
        var flow = FlowReader(text: text, line: line)
        let node = try flow.value(closers: [])
        flow.skipSpaces()
        guard flow.isAtEnd else { throw YAMLNode.Failure(line: line, problem: "unexpected text after the value: \(flow.rest)") }
        return node
    }

    /// A quoted scalar at the start of `text`, and what follows it.
    static func quoted(_ text: Substring, line: Int) throws(YAMLNode.Failure) -> (String, Substring) {
        let quote = text.first!
        var out = ""
        var index = text.index(after: text.startIndex)
        while index < text.endIndex {
            let character = text[index]
            if character == quote {
                let next = text.index(after: index)
                if quote == "'", next < text.endIndex, text[next] == "'" { out.append("'"); index = text.index(after: next); continue }
                return (out, text[next...])
            }
            if quote == "\"", character == "\\" {
                index = text.index(after: index)
                guard index < text.endIndex else { break }
                switch text[index] {
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "r": out.append("\r")
                case "0": out.append("\0")
                case "\"", "\\", "/", " ": out.append(text[index])
                case "u", "U", "x":
                    let width = text[index] == "x" ? 2 : text[index] == "u" ? 4 : 8
                    let digits = text[text.index(after: index)...].prefix(width)
                    guard digits.count == width, let value = UInt32(digits, radix: 16), let scalar = Unicode.Scalar(value) else {
                        throw YAMLNode.Failure(line: line, problem: "a bad \\\(text[index]) escape")
                    }
                    out.unicodeScalars.append(scalar)
                    index = text.index(index, offsetBy: width)
                default: throw YAMLNode.Failure(line: line, problem: "unknown escape \\\(text[index]) in a double-quoted string")
                }
                index = text.index(after: index)
                continue
            }
            out.append(character)
            index = text.index(after: index)
        }
        throw YAMLNode.Failure(line: line, problem: "a quoted string does not end on its line")
    }
}

/// `[a, b]`, `{k: v}` and scalars, on one line.
private struct FlowReader {
    var text: Substring
    let line: Int

    var isAtEnd: Bool { text.isEmpty }
    var rest: Substring { text }

    mutating func skipSpaces() { text = text.drop { $0 == " " } }

    func fail(_ problem: String) -> YAMLNode.Failure { YAMLNode.Failure(line: line, problem: problem) }

    mutating func value(closers: Set<Character>) throws(YAMLNode.Failure) -> YAMLNode {
        skipSpaces()
        guard let first = text.first else { return YAMLNode(kind: .scalar("", quoted: false), line: line) }
        switch first {
        case "[":
            text.removeFirst()
            var items: [YAMLNode] = []
            skipSpaces()
            if text.first == "]" { text.removeFirst(); return YAMLNode(kind: .sequence(items), line: line) }
            while true {
                items.append(try value(closers: [",", "]"]))
                skipSpaces()
                guard let next = text.first else { throw fail("a [ list does not end on its line") }
                text.removeFirst()
                if next == "]" { return YAMLNode(kind: .sequence(items), line: line) }
                guard next == "," else { throw fail("expected , or ] in a [ list") }
            }
        case "{":
            text.removeFirst()
            var pairs: [(key: YAMLNode, value: YAMLNode)] = []
            skipSpaces()
            if text.first == "}" { text.removeFirst(); return YAMLNode(kind: .mapping(pairs), line: line) }
            while true {
                let key = try value(closers: [":", ",", "}"])
                skipSpaces()
                guard text.first == ":" else { throw fail("expected key: value in a { mapping") }
                text.removeFirst()
                pairs.append((key, try value(closers: [",", "}"])))
                skipSpaces()
                guard let next = text.first else { throw fail("a { mapping does not end on its line") }
                text.removeFirst()
                if next == "}" { return YAMLNode(kind: .mapping(pairs), line: line) }
                guard next == "," else { throw fail("expected , or } in a { mapping") }
            }
        case "\"", "'":
            let (value, rest) = try YAMLScalars.quoted(text, line: line)
            text = rest
            return YAMLNode(kind: .scalar(value, quoted: true), line: line)
        case "&", "*", "!":
            throw fail("YAML anchors, aliases and tags are not supported in the config: write the value out")
        case "|", ">":
            throw fail("a block scalar (\(first)) must be a mapping's value")
        default:
            // A plain scalar runs to a closer of the enclosing flow collection (or the line's end).
            var end = text.startIndex
            while end < text.endIndex {
                let character = text[end]
                if closers.contains(character) {
                    if character != ":" { break }
                    let next = text.index(after: end)
                    if next == text.endIndex || text[next] == " " { break }
                }
                end = text.index(after: end)
            }
            var scalar = text[..<end]
            while scalar.last == " " { scalar.removeLast() }
            text = text[end...]
            return YAMLNode(kind: .scalar(String(scalar), quoted: false), line: line)
        }
    }
}
