import Foundation

/// Runs a command and fails the test setup when it fails.
@discardableResult
package func run(_ arguments: [String], in directory: String) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.currentDirectoryURL = URL(fileURLWithPath: directory)
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try process.run()
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw SetupError("\(arguments.joined(separator: " ")) failed: \(text)")
    }
    return text
}

package struct SetupError: Error, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
}

/// A certificate authority and a server certificate for 127.0.0.1, made with openssl.
package struct TestCertificates {
    package let directory: String
    package var caFile: String { directory + "/ca.pem" }
    package var certFile: String { directory + "/server.pem" }
    package var keyFile: String { directory + "/server.key" }

    package static func make(name: String) throws -> TestCertificates {
        let directory = NSTemporaryDirectory() + "pvesim-certs-\(name)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try run(["openssl", "req", "-x509"] + ec + ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                 "-subj", "/CN=pvesim test CA \(name)"], in: directory)
        try run(["openssl", "req"] + ec + ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
                in: directory)
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
            .write(toFile: directory + "/ext", atomically: true, encoding: .utf8)
        try run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext"], in: directory)
        return TestCertificates(directory: directory)
    }
}

