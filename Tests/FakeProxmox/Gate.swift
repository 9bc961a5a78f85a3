/// Holds waiters until opened: a test's way to keep a call in flight.
package actor Gate {
    private var isOpen = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    package init() {}

    package func wait() async {
        if isOpen { return }
        await withCheckedContinuation { waiting.append($0) }
    }

    package func open() {
        isOpen = true
        waiting.forEach { $0.resume() }
        waiting = []
    }
}
