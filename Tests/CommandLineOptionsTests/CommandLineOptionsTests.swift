import CommandLineOptions
import Testing

private enum Colour: String, CaseIterable { case red, blue }

private let serve = CommandSpec(name: "serve", abstract: "Serve.", options: [
    .option("endpoint", help: "Where to listen."),
    .option("colour", help: "A colour.", default: "red", choices: Colour.allCases.map(\.rawValue)),
    .option("grace", help: "Seconds.", default: "10"),
])
private let move = CommandSpec(name: "move", abstract: "Move.", discussion: "Moves things.", options: [
    .option("to", help: "Where to."),
    .flag("dry-run", help: "Change nothing."),
])
private let program = CommandLineProgram(name: "tool", abstract: "A tool.", commands: [serve, move], defaultCommand: "serve")

private func options(_ arguments: String...) throws -> ParsedOptions {
    guard case .run(let options) = try program.parse(arguments) else { throw UsageError("not a run") }
    return options
}

private func usageError(_ arguments: String...) -> String? {
    do {
        _ = try program.parse(arguments)
        return nil
    } catch {
        return error.description
    }
}

@Test func noSubcommandRunsTheDefaultWithItsOptions() throws {
    let parsed = try options("--endpoint", "unix:///a.sock", "--colour=blue")
    #expect(parsed.command == "serve")
    #expect(parsed.value("endpoint") == "unix:///a.sock")
    #expect(try parsed.choice("colour", default: Colour.red) == .blue)
    #expect(try parsed.number("grace", default: 10) == 10)
    #expect(try options().command == "serve")
}

@Test func aNamedSubcommandTakesItsOwnOptionsAndFlags() throws {
    let parsed = try options("move", "--to", "pve2", "--dry-run")
    #expect(parsed.command == "move")
    #expect(try parsed.required("to") == "pve2")
    #expect(parsed.flag("dry-run"))
    #expect(try !options("move", "--to", "pve2").flag("dry-run"))
}

@Test func aValueMayStartWithADashButNotWithTwo() throws {
    #expect(try options("--grace", "-1").number("grace", default: 0) == -1)
    #expect(usageError("--endpoint", "--colour", "red") == "--endpoint needs a value")
    #expect(usageError("--endpoint") == "--endpoint needs a value")
}

@Test func badInputNamesTheOptionAndTheReason() throws {
    #expect(usageError("--colour", "green") == "--colour: \"green\" is not one of red, blue")
    #expect(usageError("--no-such") == "unknown option --no-such (see tool help serve)")
    #expect(usageError("move", "--endpoint", "x") == "unknown option --endpoint (see tool help move)")
    #expect(usageError("stray") == "unexpected argument \"stray\" (see tool help serve)")
    #expect(usageError("move", "--dry-run=yes") == "--dry-run takes no value")
    #expect(usageError("help", "nothing") == "no subcommand named \"nothing\"")
    #expect(throws: UsageError.self) { try options("--grace", "soon").number("grace", default: 10) }
    #expect(throws: UsageError.self) { try options("move").required("to") }
}

@Test func helpAndVersionWinOverEverythingElse() throws {
    guard case .help(let root) = try program.parse(["--help"]) else { Issue.record("no program help"); return }
    #expect(root.contains("serve (default)") && root.contains("move"))
    guard case .help(let moveHelp) = try program.parse(["help", "move"]) else { Issue.record("no move help"); return }
    #expect(moveHelp.contains("Moves things.") && moveHelp.contains("--to <to>") && moveHelp.contains("--dry-run "))
    guard case .help(let serveHelp) = try program.parse(["--colour", "green", "-h"]) else { Issue.record("no serve help"); return }
    #expect(serveHelp.contains("--colour <colour>") && serveHelp.contains("(values: red, blue) (default: red)"))
    guard case .version = try program.parse(["move", "--version"]) else { Issue.record("no version"); return }
}

@Test func helpIsWrappedWithinEightyColumns() throws {
    let long = CommandSpec(name: "serve", abstract: "Serve.", options: [
        .option("a-rather-long-option-name", help: String(repeating: "word ", count: 40)),
    ])
    let help = CommandLineProgram(name: "tool", abstract: "A tool.", commands: [long], defaultCommand: "serve").help(for: long)
    let lines = help.split(separator: "\n")
    #expect(lines.allSatisfy { $0.count <= 80 })
    #expect(lines.contains("  --a-rather-long-option-name <a-rather-long-option-name>"))
    #expect(help.split(separator: " ").filter { $0.hasPrefix("word") }.count == 40)
}
