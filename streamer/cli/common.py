"""What every command shares besides its options: a line to the user on stderr, and SIGTERM handled
as Ctrl-C, so that a service stopped by its supervisor closes its files and prints its summary."""

from __future__ import annotations

import signal
import sys
import threading


def say(message: str) -> None:
    print(f"harstream: {message}", file=sys.stderr, flush=True)


def sigterm_as_interrupt() -> None:
    """SIGTERM stops as Ctrl-C does: sources stop, files close, the summary prints."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
