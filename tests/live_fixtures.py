"""Real components for the live tests: a mosquitto broker, a tiny checkpoint, a short recording,
and the CLI as a subprocess. Imported by the test modules (``from live_fixtures import ...``)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import save_checkpoint
from model.network import NetworkConfig, ResidualBiLSTM
from model.preprocessing import PreprocessingSpec
from model.recordings import HAPT_ACTIVITIES, HAPT_CHANNELS, Recording, load_hapt, write_csv_recording

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 40  # of the recording the end-to-end tests play


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A real broker on a loopback port; ``restart`` keeps the port (and, like a crash, no state)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():  # CI installs it; a missing broker is a broken setup, not a skip
            pytest.fail("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients")
        self.binary = binary
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    pytest.fail(f"mosquitto did not start on port {self.port}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)


@pytest.fixture
def broker(tmp_path: Path):
    server = Mosquitto(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained, tiny model: the tests compare paths, not accuracy."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    meta = {"name": "tiny", "classes": list(HAPT_ACTIVITIES), "input_channels": list(HAPT_CHANNELS),
            "rate_hz": 50.0, "window": 128, "preprocessing": PreprocessingSpec().to_dict(),
            "config": {"data": {"label_rule": "all"}}}  # fmt: skip
    save_checkpoint(path, ResidualBiLSTM(NetworkConfig(n_hidden=8, n_stacked=1, n_residual=1)), meta)
    return path


@pytest.fixture(scope="session")
def short_recording(tmp_path_factory) -> Path:
    """The first SECONDS of HAPT subject 2, as a generic CSV recording named ``wrist``."""
    full = load_hapt((2,))[0]
    n = int(SECONDS * full.rate_hz)
    cut = Recording("wrist", full.subject, full.timestamps[:n], full.values[:n], full.labels[:n],
                    full.channels, full.classes, full.rate_hz)  # fmt: skip
    path = tmp_path_factory.mktemp("recordings") / "wrist.csv"
    write_csv_recording(path, cut)
    return path


def replay_reference(checkpoint: Path, recording: Path, hop: int = 64) -> list[dict]:
    """What ``harstream replay`` predicts for the recording, computed in this process."""
    from replay.sources import Inputs, ReplaySource, parse_source
    from streamer.cli import build_parser, live_parts, open_checkpoint

    args = build_parser().parse_args(["replay", "--checkpoint", str(checkpoint), "--hop", str(hop)])
    ck = open_checkpoint(checkpoint)
    devices = parse_source(f"csv:{recording}", Inputs(ck.input_channels, ck.classes, ck.rate_hz))
    pipeline, _ = live_parts(args, ck, [ReplaySource(devices[0], speed=0)])
    return [p.to_json() for p in pipeline.run()]


def same_predictions(got: list[dict], want: list[dict]) -> None:
    assert [p["label"] for p in got] == [p["label"] for p in want]
    for a, b in zip(got, want, strict=True):
        assert np.allclose(list(a["probs"].values()), list(b["probs"].values()), atol=1e-4)


def harstream(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # as the installed ``harstream`` script runs it (``-m streamer.cli`` would load cli.py twice)
    command = [sys.executable, "-c", "import sys; from streamer.cli import main; sys.exit(main())", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # fmt: skip


class Lines:
    """A stream's lines, read in a thread (select() cannot see lines already buffered)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait(self, done, timeout: float) -> list[str]:
        """The lines so far, once ``done(lines)`` holds, the stream ends, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while not done(self.lines) and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.lines)


def predictions(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        record = json.loads(line)
        if "summary" not in record:
            out.append(record)
    return out
