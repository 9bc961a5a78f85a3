/// A small parser for `--name value` command lines with subcommands, written for this
/// driver in place of swift-argument-parser: that library finds a command's options by
/// reflection at start-up, which costs the node plugin about 3 MiB of resident memory
/// (its code, the runtime's demangler, the reflection sections) on every Kubernetes node.

/// One option of a command: `--name <value>` or, with no value name, a flag.
public struct OptionSpec: Sendable {
    public let name: String
    public let help: String
    /// nil for a flag, which takes no value.
    public let valueName: String?
    /// Shown in the help; the command applies its own default.
    public let defaultValue: String?
    /// When not empty, the only values accepted.
    public let choices: [String]

    public static func option(_ name: String, help: String, default defaultValue: String? = nil,
                              choices: [String] = []) -> OptionSpec {
        OptionSpec(name: name, help: help, valueName: name, defaultValue: defaultValue, choices: choices)
    }

    public static func flag(_ name: String, help: String) -> OptionSpec {
        OptionSpec(name: name, help: help, valueName: nil, defaultValue: nil, choices: [])
    }

    var usage: String { valueName.map { "--\(name) <\($0)>" } ?? "--\(name)" }
}

/// A subcommand: its name, what it does, and its options.
public struct CommandSpec: Sendable {
    public let name: String
    public let abstract: String
    public let discussion: String?
    public let options: [OptionSpec]

    public init(name: String, abstract: String, discussion: String? = nil, options: [OptionSpec]) {
        self.name = name
        self.abstract = abstract
        self.discussion = discussion
        self.options = options
    }

    func option(named name: String) -> OptionSpec? { options.first { $0.name == name } }
}

/// A command line the program cannot run: one line for the user, exit code 2.
public struct UsageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The values a command line gave, by option name.
public struct ParsedOptions: Sendable {
    public let command: String
    private let values: [String: String]
    private let flags: Set<String>

    init(command: String, values: [String: String], flags: Set<String>) {
        self.command = command
        self.values = values
        self.flags = flags
    }

    public func value(_ name: String) -> String? { values[name] }

    public func flag(_ name: String) -> Bool { flags.contains(name) }

    public func required(_ name: String) throws(UsageError) -> String {
        guard let value = values[name] else { throw UsageError("missing --\(name)") }
        return value
    }

    public func number(_ name: String, default defaultValue: Double) throws(UsageError) -> Double {
        guard let text = values[name] else { return defaultValue }
        guard let number = Double(text), number.isFinite else { throw UsageError("--\(name): \"\(text)\" is not a number") }
        return number
    }

    /// A value the parser already checked against the option's choices.
    public func choice<Choice: RawRepresentable>(_ name: String, default defaultValue: Choice) throws(UsageError) -> Choice
    where Choice.RawValue == String {
        guard let text = values[name] else { return defaultValue }
        guard let choice = Choice(rawValue: text) else { throw UsageError("--\(name): \"\(text)\" is not accepted") }
        return choice
    }
}

/// What a command line asks for.
public enum CommandLineRequest: Sendable {
    case run(ParsedOptions)
    /// Help text to print (exit 0).
    case help(String)
    case version
}

/// A program of subcommands, one of which runs when the command line names none.
public struct CommandLineProgram: Sendable {
    public let name: String
    public let abstract: String
    public let commands: [CommandSpec]
    public let defaultCommand: String

    public init(name: String, abstract: String, commands: [CommandSpec], defaultCommand: String) {
        self.name = name
        self.abstract = abstract
        self.commands = commands
        self.defaultCommand = defaultCommand
    }

    public func parse(_ arguments: [String]) throws(UsageError) -> CommandLineRequest {
        var rest = arguments[...]
        if rest.first == "help" {
            rest = rest.dropFirst()
            guard let name = rest.first else { return .help(programHelp) }
            guard let command = command(named: name) else { throw UsageError("no subcommand named \"\(name)\"") }
            return .help(help(for: command))
        }
        if rest.first == "--help" || rest.first == "-h" { return .help(programHelp) }
        if let first = rest.first, let command = command(named: first) { return try parse(rest.dropFirst(), as: command.name) }
        return try parse(rest, as: defaultCommand)
    }

    private func command(named name: String) -> CommandSpec? { commands.first { $0.name == name } }

    private func parse(_ arguments: ArraySlice<String>, as name: String) throws(UsageError) -> CommandLineRequest {
        let command = command(named: name)!
        // Help and version win over whatever else the line holds, a bad value included.
        if arguments.contains("--help") || arguments.contains("-h") { return .help(help(for: command)) }
        if arguments.contains("--version") { return .version }
        var values: [String: String] = [:]
        var flags: Set<String> = []
        var rest = arguments
        while let argument = rest.popFirst() {
            guard argument.hasPrefix("--"), argument.count > 2 else {
                throw UsageError("unexpected argument \"\(argument)\" (see \(self.name) help \(command.name))")
            }
            let body = argument.dropFirst(2)
            let equals = body.firstIndex(of: "=")
            let optionName = String(equals.map { body[..<$0] } ?? body)
            guard let option = command.option(named: optionName) else {
                throw UsageError("unknown option --\(optionName) (see \(self.name) help \(command.name))")
            }
            guard option.valueName != nil else {
                if equals != nil { throw UsageError("--\(optionName) takes no value") }
                flags.insert(optionName)
                continue
            }
            let value: String
            if let equals {
                value = String(body[body.index(after: equals)...])
            } else if let next = rest.first, !next.hasPrefix("--") {
                value = next
                rest = rest.dropFirst()
            } else {
                throw UsageError("--\(optionName) needs a value")
            }
            if !option.choices.isEmpty, !option.choices.contains(value) {
                throw UsageError("--\(optionName): \"\(value)\" is not one of \(option.choices.joined(separator: ", "))")
            }
            values[optionName] = value
        }
        return .run(ParsedOptions(command: command.name, values: values, flags: flags))
    }

    public var programHelp: String {
        var text = "OVERVIEW: \(abstract)\n\nUSAGE: \(name) <subcommand> [options]\n\nSUBCOMMANDS:\n"
        for command in commands {
            let label = command.name == defaultCommand ? "\(command.name) (default)" : command.name
            text += columns(label, command.abstract)
        }
        text += "\nOPTIONS:\n" + columns("--version", "Show the version.") + columns("-h, --help", "Show help information.")
        return text + "\nSee '\(name) help <subcommand>' for a subcommand's options.\n"
    }

    public func help(for command: CommandSpec) -> String {
        var text = "OVERVIEW: \(command.abstract)\n\n"
        if let discussion = command.discussion { text += wrapped(discussion, width: 80, indent: "") + "\n" }
        text += "USAGE: \(name) \(command.name) [options]\n\nOPTIONS:\n"
        for option in command.options {
            var help = option.help
            if !option.choices.isEmpty { help += " (values: \(option.choices.joined(separator: ", ")))" }
            if let defaultValue = option.defaultValue { help += " (default: \(defaultValue))" }
            text += columns(option.usage, help)
        }
        return text + columns("--version", "Show the version.") + columns("-h, --help", "Show help information.")
    }

    /// `  label   help`, the help wrapped at 80 columns from column 26.
    private func columns(_ label: String, _ help: String) -> String {
        let indent = String(repeating: " ", count: 26)
        let body = wrapped(help, width: 80 - indent.count, indent: indent)
        let head = "  " + label
        if head.count < indent.count {
            return head + String(repeating: " ", count: indent.count - head.count) + body.dropFirst(indent.count)
        }
        return head + "\n" + body
    }

    private func wrapped(_ text: String, width: Int, indent: String) -> String {
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty, line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += line.isEmpty ? String(word) : " " + word
        }
        if !line.isEmpty { lines.append(line) }
        return lines.map { indent + $0 + "\n" }.joined()
    }
}
