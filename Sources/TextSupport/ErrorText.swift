import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

extension Error {
    /// A short reason for a file operation's failure ("No such file or directory"),
    /// where Foundation's localizedDescription would need all of Foundation.
    public var reason: String {
        if let cocoa = self as? CocoaError, let posix = cocoa.underlying as? POSIXError {
            return String(cString: strerror(posix.code.rawValue))
        }
        if let posix = self as? POSIXError { return String(cString: strerror(posix.code.rawValue)) }
        return "\(self)"
    }
}
