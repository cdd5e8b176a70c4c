"""Real components for the live tests: a mosquitto broker, a tiny checkpoint, a short recording,
and the CLI as a subprocess. Imported by the test modules (``from live_fixtures import ...``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from model.data.recordings import Recording, load_hapt, write_csv_recording
from streamer.core.mqtt_connection import parse_broker
from streamer.sinks.episodes import EpisodeSink
from streamer.tools import private_mosquitto as broker_module
from streamer.tools.bench_mqtt import wait_until  # noqa: F401 - the tests import it from here
from streamer.tools.private_mosquitto import free_port  # noqa: F401 - the tests import it from here

if TYPE_CHECKING:
    from model.config import DataConfig

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 40  # of the recording the end-to-end tests play


class Mosquitto(broker_module.Mosquitto):
    """The shared broker helper (:mod:`streamer.tools.private_mosquitto`); a broker that cannot start
    fails the test, since CI installs mosquitto: a missing broker is a broken setup, not a skip."""

    def start(self, timeout: float = 10.0) -> None:
        try:
            super().start(timeout)
        except broker_module.BrokerError as error:
            pytest.fail(str(error))


def mqtt_client(url: str, protocol: int = mqtt.MQTTv5) -> mqtt.Client:
    """A plain paho client connected to ``url``, its network loop running in a thread."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
    address = parse_broker(url)
    client.connect(address.host, address.port)
    client.loop_start()
    return client


def write_tiny_checkpoint(path: Path, window: int = 128, data: DataConfig | None = None) -> Path:
    """An untrained 1x1 network with the shipped model's inputs (or ``data``'s): enough to test the
    plumbing."""
    import torch

    from model.config import DataConfig, NetworkConfig
    from model.net.checkpoint import save_checkpoint
    from model.net.checkpoint_meta import CheckpointMeta, meta_path
    from model.net.network import ResidualBiLSTM
    from model.train.experiment import experiment

    torch.manual_seed(0)
    network = NetworkConfig(n_hidden=8, n_stacked=1, n_residual=1, dropout=0.0)  # sizes: the data's
    data = data or DataConfig(window=window, step=window // 2)
    config = experiment(name=path.stem, data=data, model=network)
    model = ResidualBiLSTM(config.model)
    meta = CheckpointMeta.from_training(
        meta_path(path), config, normalisation=(model.feature_mean.tolist(), model.feature_std.tolist()),
        best_epoch=0, val=None, test={}, history=[], data_fingerprint="untrained", command="tests",
        train_seconds=0.0, wall_seconds=0.0, machine="", torch_version=torch.__version__,
    )  # fmt: skip
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture
def broker(tmp_path: Path):
    try:
        server = Mosquitto(tmp_path)
    except broker_module.BrokerError as error:  # mosquitto is not installed
        pytest.fail(str(error))
    yield server
    server.stop()


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
    from streamer.cli.main import build_parser
    from streamer.live import LiveOptions, assemble, open_checkpoint

    args = build_parser().parse_args(["replay", "--checkpoint", str(checkpoint), "--hop", str(hop)])
    ck = open_checkpoint(checkpoint)
    devices = parse_source(f"csv:{recording}", Inputs(ck.input_channels, ck.classes, ck.rate_hz))
    pipeline = assemble(LiveOptions.from_args(args), ck, [ReplaySource(devices[0], speed=0)]).pipeline
    return [p.to_json() for p in pipeline.run()]


def same_predictions(got: list[dict], want: list[dict]) -> None:
    assert [p["label"] for p in got] == [p["label"] for p in want]
    for a, b in zip(got, want, strict=True):
        assert np.allclose(list(a["probs"].values()), list(b["probs"].values()), atol=1e-4)


def harstream(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "streamer.cli.main", *args]  # cli.py as __main__: no module loads twice
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


def mqtt_options(url: str, client_id: str = "recognizer", persistent: bool = False, announce: bool = True):
    """MQTT options for ``har/+/imu`` on ``url``; ``persistent`` keeps the session on the broker,
    ``announce`` publishes the recognizer's availability."""
    from streamer.core.mqtt_connection import MqttOptions, TopicPattern

    return MqttOptions(parse_broker(url), TopicPattern.parse("har/+/imu"), client_id=client_id,
                       persistent=persistent, announce=announce)  # fmt: skip


class Heard(EpisodeSink):
    """An episode sink that hands each event (and each ended episode) to plain functions."""

    def __init__(self, event=None, finished=None) -> None:
        self.on_event, self.on_finished = event, finished

    def event(self, event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def finished(self, episode) -> None:
        if self.on_finished is not None:
            self.on_finished(episode)


class Recognizer:
    """The mqtt command's parts, in this process: source, pipeline, predictions collected. Its
    announcer publishes predictions only, or, with ``events``, hears the episodes as the command's
    does (predictions and episode events)."""

    def __init__(self, url: str, checkpoint: Path, *extra: str, client_id: str = "recognizer",
                 publish: bool = False, discovery: bool = False, events: bool = False,
                 persistent: bool = False) -> None:  # fmt: skip
        from streamer.cli.main import build_parser
        from streamer.live import LiveOptions, assemble, open_checkpoint
        from streamer.sinks.announcer import Announcer
        from streamer.sources.mqtt import MqttSource

        argv = ["mqtt", "--broker", url, "--checkpoint", str(checkpoint), "--hop", "64", *extra]
        live = LiveOptions.from_args(build_parser().parse_args(argv))
        ck = open_checkpoint(checkpoint)
        options = mqtt_options(url, client_id, persistent, announce=publish or discovery)
        self.source = MqttSource(options, ck.input_channels, max_devices=live.max_devices)
        self.run = assemble(live, ck, [self.source])  # binds the source to the pipeline's drops
        self.pipeline = self.run.pipeline
        self.publisher = None
        if publish or discovery:
            self.publisher = Announcer(self.source.connection, discovery=discovery)
            (self.run.episodes.sinks if events else self.pipeline.sinks).append(self.publisher)
        self.predictions: list[dict] = []
        self.source.start()
        assert self.source.connected.wait(10), self.source.status
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        for prediction in self.pipeline.run():
            self.predictions.append(prediction.to_json())

    def of(self, device: str) -> list[dict]:
        return [p for p in self.predictions if p["device"] == device]

    def wait(self, device: str, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.of(device)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.of(device)

    def close(self) -> None:
        self.pipeline.stop()
        self.thread.join(5)
        self.source.close()


class TimedLines(Lines):
    """Lines with the moment (time.monotonic()) each one was read: for holes in a live stream."""

    def __init__(self, stream) -> None:
        self.times: list[float] = []
        super().__init__(stream)

    def _read(self, stream) -> None:
        for line in stream:
            self.times.append(time.monotonic())
            self.lines.append(line.rstrip("\n"))
