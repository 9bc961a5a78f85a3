"""What the benchmark scripts share: waiting for the processes they start."""
import time
from pathlib import Path


def wait_until(ready, seconds=10, what="a condition"):
    """Polls `ready()` until it is true; TimeoutError naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.025)


def wait_for_text(path, seconds=10):
    """The contents of `path` once a process has written some (a port file)."""
    wait_until(lambda: Path(path).exists() and Path(path).read_text(), seconds, str(path))
    return Path(path).read_text()


def wait_for_socket(path, seconds=10):
    wait_until(Path(path).exists, seconds, str(path))
