"""A minimal QMP client (QEMU Machine Protocol over a unix socket), standard
library only: the simulator's guest mode plugs disks with it, and the guest
test bed (guest/vm.py) drives its VM with it."""
import json
import socket
import time


class QMPError(RuntimeError):
    def __init__(self, command, error):
        super().__init__(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
        self.error = error


class QMP:
    """One connection: the greeting, qmp_capabilities, then one command at a
    time. Events that arrive between replies are kept in `events`."""

    def __init__(self, path, timeout=60):
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""
        self.events = []
        self._reply()  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command, **arguments):
        """Runs `command`; returns its 'return' value or raises QMPError."""
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
            reply = self._reply()
        except (OSError, ValueError):
            # A reply not read now would answer the next command: this connection is done.
            self.close()
            raise
        if "error" in reply:
            raise QMPError(command, reply["error"])
        return reply.get("return")

    def hmp(self, command_line):
        """A human-monitor command through QMP (qemu-server's hmp_cmd); returns its text."""
        return self.execute("human-monitor-command", **{"command-line": command_line})

    def wait_event(self, name, timeout=30):
        """Returns (and forgets) the first event called `name`, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name:
                    self.events.remove(event)
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no QMP event {name} within {timeout}s")
            try:
                self.events.append(self._message(remaining))
            except socket.timeout:
                pass

    def _message(self, timeout):
        # Up to the next newline; a timeout keeps a partial line for the next call.
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def _reply(self):
        while "event" in (message := self._message(self.timeout)):
            self.events.append(message)
        return message

    def close(self):
        self.sock.close()
