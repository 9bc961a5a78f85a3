import UnaryGRPC

/// Paging for the List RPCs: entries are sorted, and a token is the index of
/// the next entry to return.
enum Paging {
    /// The index a `starting_token` names; ABORTED for a token never given out.
    static func start(_ token: String, maxEntries: Int32, what: String) throws(RPCError) -> Int {
        guard maxEntries >= 0 else { throw RPCError(.invalidArgument, "max_entries cannot be negative") }
        guard !token.isEmpty else { return 0 }
        guard let index = Int(token), index >= 0 else {
            throw RPCError(.aborted, "starting_token \"\(token)\" is not a token \(what) gave out")
        }
        return index
    }

    /// The range to return and the next token ("" when this is the last page).
    static func page(count: Int, start: Int, maxEntries: Int32, what: String) throws(RPCError) -> (range: Range<Int>, next: String) {
        guard start <= count else { throw RPCError(.aborted, "starting_token \(start) is past the end of the \(count) entries of \(what)") }
        let end = maxEntries > 0 ? min(count, start + Int(maxEntries)) : count
        return (start..<end, end < count ? String(end) : "")
    }
}
