"""A private mosquitto on a free loopback port: for the tests and for ``harstream bench``.

    with Mosquitto(folder) as broker:
        ...  # broker.url is mqtt://127.0.0.1:PORT

``restart`` (``stop`` then ``start``) keeps the port and, like a crash, no state.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(RuntimeError):
    """mosquitto is missing or did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise BrokerError("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients")
    return binary


class Mosquitto:
    """A real broker on ``127.0.0.1``; ``extra`` lines are appended to its configuration."""

    def __init__(self, folder: Path, extra: tuple[str, ...] = ()) -> None:
        self.binary = mosquitto_binary()
        self.port = free_port()
        self.config = Path(folder) / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false", *extra]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise BrokerError(f"mosquitto did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
