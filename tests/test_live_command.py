"""The command line's plumbing: options read once into LiveOptions, one decision about threads,
no import cycle between the command files, help that groups what belongs together, progress."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from live_fixtures import ROOT

from streamer.cli.main import build_parser, main
from streamer.core import limits
from streamer.errors import CliError
from streamer.live import (
    LiveOptions,
    assemble,
    inference_threads,
    live_engine,
    open_checkpoint,
)


def options(*argv: str, **overrides) -> LiveOptions:
    return LiveOptions.from_args(build_parser().parse_args(list(argv)), **overrides)


def test_live_options_are_read_once_typed_and_frozen(tiny_checkpoint) -> None:
    replay = options("replay", "--checkpoint", str(tiny_checkpoint), "--hop", "32", "--smooth", "3",
                     "--jsonl")  # fmt: skip
    assert (replay.checkpoint, replay.hop, replay.smooth, replay.jsonl) == (tiny_checkpoint, 32, 3, True)
    assert replay.max_devices == limits.MAX_DEVICES
    assert replay.idle_timeout_s == 0.0  # a replay forgets no one
    mqtt = options("mqtt", "--broker", "mqtt://h")
    assert (mqtt.max_devices, mqtt.idle_timeout_s) == (limits.MAX_DEVICES, limits.IDLE_TIMEOUT_S)  # limits.py
    mqtt = options("mqtt", "--broker", "mqtt://h", "--max-devices", "5", "--idle-timeout", "1.5")
    assert (mqtt.max_devices, mqtt.idle_timeout_s) == (5, 1.5)
    assert options("serial", "--port", "loop://", headless=True).headless  # a command's own decision
    with pytest.raises(dataclasses.FrozenInstanceError):
        replay.headless = True  # type: ignore[misc]


def test_the_pipeline_is_built_from_the_options(tiny_checkpoint) -> None:
    live = options("mqtt", "--broker", "mqtt://h", "--checkpoint", str(tiny_checkpoint), "--hop", "16",
                   "--max-devices", "7", "--idle-timeout", "9", "--smooth", "2", "--max-wait-ms", "40",
                   "--max-batch", "8")  # fmt: skip
    run = assemble(live, open_checkpoint(tiny_checkpoint), [])
    pipeline, hop = run.pipeline, run.hop
    assert hop == pipeline.scheduler.hop == 16
    assert (pipeline.scheduler.max_devices, pipeline.scheduler.idle_timeout_s) == (7, 9.0)
    assert (pipeline.decider.smooth, pipeline.max_wait_s, pipeline.engine.max_batch) == (2, 0.04, 8)


@pytest.mark.parametrize(("option", "words"), [
    (["--smooth", "0"], "--smooth: must be from 1 to"),
    (["--hop", "-4"], "--hop: must be from 1 to"),
    (["--max-batch", "0"], "--max-batch: must be from 1 to"),
    (["--max-wait-ms", "nan"], "--max-wait-ms: must be from 0 to"),
    (["--threads", "-1"], "--threads: must be from 0 to"),
])  # fmt: skip
def test_absurd_live_options_are_one_line(tiny_checkpoint, capsys, option, words) -> None:
    with pytest.raises(SystemExit) as stopped:  # refused while parsing (streamer/options.py): exit 2
        main(["replay", "hapt:2", "--checkpoint", str(tiny_checkpoint), "--headless", *option])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and len(err.splitlines()) == 1 and words in err, err


def test_a_shard_worker_s_default_threads_are_its_share_of_the_cores(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert inference_threads(0, workers=4) == 2  # 0: the library's default, which is this worker's share
    assert inference_threads(0, workers=16) == 1
    assert inference_threads(0, workers=1) == 0  # a lone recognizer: the library's own default
    assert inference_threads(3, workers=4) == 3  # a number given is kept
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert inference_threads(0, workers=4) == 3  # the environment decides instead
    assert options("mqtt", "--broker", "mqtt://h", "--threads", "0", workers=2).inference_threads == 3


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_engine_runs_on_the_threads_decided_once(tiny_checkpoint, monkeypatch, backend) -> None:
    """Was: ``share_cores`` set torch's threads for a shard worker, then the engine's ``--threads``
    (default 1) overwrote them, and an ONNX worker's 0 took every core."""
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)  # a worker's share differs from the default of 1
    before = torch.get_num_threads()
    try:
        for argv, workers in ((["--threads", "0"], 2), ([], 2), (["--threads", "2"], 1)):
            live = options("mqtt", "--broker", "mqtt://h", "--checkpoint", str(tiny_checkpoint), "--backend",
                           backend, *argv, workers=workers)  # fmt: skip
            engine = live_engine(live.checkpoint, live.backend, live.inference_threads, live.max_batch)
            if backend == "torch":
                used = torch.get_num_threads()
            else:
                used = engine.backend.session.get_session_options().intra_op_num_threads
            assert used == live.inference_threads == {"0": 4, "2": 2}.get(argv[-1] if argv else "", 1), argv
    finally:
        torch.set_num_threads(before)


# -- the entry point ---------------------------------------------------------------------------
def test_python_m_streamer_cli_fails_in_one_line() -> None:
    """``python -m streamer.cli.main`` runs main.py as __main__; a CliError raised in a command module
    is the one it catches (streamer/errors.py defines it, not the module that runs twice)."""
    process = subprocess.run([sys.executable, "-m", "streamer.cli.main", "record", "--out", "x"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert process.returncode == 1
    assert process.stderr.strip() == "harstream record: record from one of --broker URL or --port DEV"


# -- help and progress -----------------------------------------------------------------------------
def test_record_help_groups_the_mqtt_and_serial_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["record", "--help"])
    text = capsys.readouterr().out
    mqtt, serial, output = (text.index(g) for g in ("\nMQTT source", "\nserial source", "\noutput:"))
    assert mqtt < text.index("\n  --broker") < text.index("\n  --client-id") < serial
    assert serial < text.index("\n  --port") < text.index("\n  --baud") < output < text.index("\n  --out")


def test_live_commands_group_their_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["mqtt", "--help"])
    text = capsys.readouterr().out
    assert text.index("\nMQTT source") < text.index("\n  --broker") < text.index("\ndevices and workers")
    at = {key: text.index(f"\n{key}") for key in ("recognition:", "  --hop", "output:", "  --jsonl")}
    assert at["recognition:"] < at["  --hop"] < at["output:"] < at["  --jsonl"]


def test_bench_says_each_stage_as_it_starts(tiny_checkpoint) -> None:
    from model.net.checkpoint import load_checkpoint
    from streamer.tools.bench import inference_figures, largest_fleet

    checkpoint = load_checkpoint(tiny_checkpoint)
    stages: list[str] = []
    inference_figures(checkpoint, 0.05, (1, 4), progress=stages.append)
    largest_fleet(checkpoint, 0.5, (2,), progress=stages.append)
    assert stages[:2] == ["the reference: torch.mm's FLOP rate",
                          "the baseline: eager PyTorch, one window at a time"]  # fmt: skip
    assert "inference: eager at batch 4" in stages and "inference: onnx at batch 1" in stages
    assert stages[-1] == "end to end: 2 simulated devices for 0.5 s"


def test_a_publisher_says_what_it_sent_and_how_its_broker_is(short_recording) -> None:
    from live_fixtures import free_port, mqtt_options

    from model.data.recordings import read_csv_recording
    from model.data.signals import HAPT_ACTIVITIES, HAPT_CHANNELS
    from replay.sources import Device
    from streamer.tools.simulated_wearable import Publisher

    recording = read_csv_recording(short_recording, HAPT_CHANNELS, HAPT_ACTIVITIES, 50.0)
    device = Device("w", [recording, recording])
    publisher = Publisher(mqtt_options(f"mqtt://127.0.0.1:{free_port()}"), device, "w")
    assert publisher.total_samples == 2 * len(recording.timestamps)
    assert publisher.state == "waiting for the broker"
    publisher.connected.set()
    assert publisher.state == "connected"
    publisher.reconnects = 2
    assert publisher.state == "connected (2 reconnects)"
    publisher.error = "broker ... did not come back within 10 s"
    assert publisher.state.startswith("gave up")


def test_a_missing_live_option_never_reaches_the_pipeline_as_a_namespace() -> None:
    """Everything below the command line reads LiveOptions; a command whose parser lacks an option
    gets the documented default, not an AttributeError or a getattr fallback."""
    live = options("serial", "--port", "loop://")
    assert live.max_devices == limits.MAX_DEVICES and live.workers == 1
    with pytest.raises(CliError):
        LiveOptions(idle_timeout_s=-1.0)
