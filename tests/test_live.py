"""The live path end to end: replay → scheduler → engine → predictions, dashboard, command line."""

import json
import time

import numpy as np
import pytest
from rich.console import Console

from model.data.datasets import recording_windows
from model.data.recordings import Recording, load_hapt
from model.data.signals import HAPT_ACTIVITIES
from model.net.checkpoint import load_checkpoint
from model.train.experiment import from_dict
from model.train.training import predict_proba
from replay.sources import Device, Inputs, ReplaySource, parse_source
from streamer.cli.main import main
from streamer.core.backends import TorchBackend
from streamer.core.engine import UNCERTAIN, Decider, InferenceEngine
from streamer.core.pipeline import Pipeline
from streamer.core.scheduler import Scheduler
from streamer.core.source import SourceBase
from streamer.core.types import FleetBatch
from streamer.ui.dashboard import Dashboard


def pipeline_for(checkpoint, devices, hop=64, speed=0.0, max_batch=256, **decider):
    scheduler = Scheduler(checkpoint.preprocessing, checkpoint.window, hop, checkpoint.rate_hz)
    sources = [ReplaySource(d, speed=speed) for d in devices]
    return Pipeline(sources, scheduler, InferenceEngine(TorchBackend(checkpoint.model), max_batch=max_batch),
                    Decider(checkpoint.classes, **decider))  # fmt: skip


def offline_probabilities(checkpoint, recordings):
    """What training/evaluation computes for each window of each recording: (session, end) -> p."""
    config = from_dict(checkpoint.meta["config"])
    out = {}
    for session, recording in enumerate(recordings):
        windows = recording_windows([recording], config.data, checkpoint.preprocessing)
        for end, p in zip(windows.ends, predict_proba(checkpoint.model, windows.x), strict=True):
            out[(session, int(end))] = p
    return out


def assert_live_equals_offline(checkpoint, subject: int):
    recordings = load_hapt((subject,))
    live = list(pipeline_for(checkpoint, [Device("wearer", recordings)]).run())
    offline = offline_probabilities(checkpoint, recordings)
    matched = [(p, offline[(p.segment, p.index)]) for p in live if (p.segment, p.index) in offline]
    assert len(matched) == len(offline) > 100  # every offline window has its live twin
    for prediction, expected in matched:
        probs = np.array([prediction.probs[c] for c in checkpoint.classes])
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert prediction.label == checkpoint.classes[int(np.argmax(expected))]
        assert prediction.truth is not None


def test_live_windows_equal_offline_windows_for_a_test_subject(tiny_checkpoint):
    assert_live_equals_offline(load_checkpoint(tiny_checkpoint), subject=9)


def test_batching_across_devices_gives_the_same_predictions_as_one_at_a_time(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    devices = [Device(f"s{s}", load_hapt((s,))[:1]) for s in (2, 4, 9)]
    batched = {(p.device, p.index): p for p in pipeline_for(checkpoint, devices, max_batch=64).run()}
    single = {(p.device, p.index): p for p in pipeline_for(checkpoint, devices, max_batch=1).run()}
    assert batched.keys() == single.keys() and len(batched) > 100
    for key, p in batched.items():
        assert p.label == single[key].label
        for c in checkpoint.classes:
            assert abs(p.probs[c] - single[key].probs[c]) < 1e-5


def test_smoothing_and_the_uncertain_label():
    windows_probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    from streamer.core.types import Window

    windows = [Window("d", float(i), np.zeros((2, 1), np.float32), time.monotonic(), None, i, 0)
               for i in range(3)]  # fmt: skip
    smoothed = Decider(("a", "b"), smooth=2).decide(windows, windows_probs)
    assert [p.label for p in smoothed] == ["a", "a", "b"]  # the middle one averages to a tie → a
    assert smoothed[1].confidence == pytest.approx(0.5)
    unsure = Decider(("a", "b"), min_confidence=0.95).decide(windows, windows_probs)
    assert {p.label for p in unsure} == {UNCERTAIN}


def short_recording(seconds: float = 12.0) -> Recording:
    """A few seconds of subject 2, from the first labelled sample on."""
    r = load_hapt((2,))[0]
    a = int(np.argmax(r.labels >= 0))
    b = a + int(seconds * r.rate_hz)
    return Recording("short", r.subject, r.timestamps[a:b], r.values[a:b], r.labels[a:b], r.channels,
                     r.classes, r.rate_hz)


def test_replay_at_speed_10_takes_about_a_tenth_of_the_recording(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    recording = short_recording(12.0)
    pipeline = pipeline_for(checkpoint, [Device("d", [recording])], hop=32, speed=10.0)
    started = time.monotonic()
    predictions = list(pipeline.run())
    elapsed = time.monotonic() - started
    # 12 s of recording / 10 = 1.2 s; the upper bound leaves room for a busy machine
    assert 1.0 < elapsed < 3.6, elapsed
    assert len(predictions) == (600 - 128) // 32 + 1


def test_dashboard_renders_activity_bars_timeline_and_counters(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    pipeline = pipeline_for(checkpoint, [Device("hapt-s02", [short_recording(8.0)])], hop=32)
    dashboard = Dashboard(pipeline, checkpoint.classes, "harstream test")
    for prediction in pipeline.run():
        dashboard.observe(prediction)
    console = Console(record=True, width=80, height=24)
    console.print(dashboard)
    text = console.export_text()
    latest = dashboard.history["hapt-s02"][-1]
    assert "hapt-s02" in text and latest.label in text and "truth" in text
    assert all(name in text for name in HAPT_ACTIVITIES)  # a bar per class
    assert "model" in text and "windows/s" in text and "dropped 0" in text
    assert "accuracy" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert len(text.splitlines()) <= 24


def test_dashboard_collapses_many_devices_into_a_table(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    devices = [Device(f"wearer-{k}", [short_recording(4.0)]) for k in range(6)]
    pipeline = pipeline_for(checkpoint, devices, hop=64)
    dashboard = Dashboard(pipeline, checkpoint.classes, "many")
    for prediction in pipeline.run():
        dashboard.observe(prediction)
    console = Console(record=True, width=80)
    console.print(dashboard)
    text = console.export_text()
    assert all(f"wearer-{k}" in text for k in range(6))
    assert len(text.splitlines()) < 16


def test_headless_jsonl_prints_one_object_per_prediction_then_a_summary(tiny_checkpoint, capsys):
    assert main(["replay", "hapt:24", "--checkpoint", str(tiny_checkpoint), "--speed", "0",
                 "--hop", "64", "--headless", "--jsonl"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    *predictions, last = lines
    assert predictions and set(predictions[0]) == {"device", "t", "label", "confidence", "probs", "truth",
                                                   "latency_ms"}  # fmt: skip
    assert {p["device"] for p in predictions} == {"hapt-s24"}
    summary = last["summary"]
    assert summary["windows"] == len(predictions)
    assert summary["samples"] == sum(len(r.timestamps) for r in load_hapt((24,)))
    assert summary["dropped"] == 0 and summary["gaps"] == 1  # two sessions, one restart
    judged = [p for p in predictions if p["truth"] is not None]
    assert summary["accuracy"] == pytest.approx(np.mean([p["label"] == p["truth"] for p in judged]))


def test_missing_checkpoint_is_one_line_naming_the_training_command(tmp_path, capsys):
    assert main(["replay", "--checkpoint", str(tmp_path / "none.pt"), "--headless"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "python train.py --config" in err


def test_unknown_source_is_one_line(tiny_checkpoint, capsys):
    assert main(["replay", "nowhere:1", "--checkpoint", str(tiny_checkpoint), "--headless"]) == 1
    assert "unknown source" in capsys.readouterr().err


def test_several_subjects_play_concurrently_as_several_devices(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    inputs = Inputs(checkpoint.input_channels, checkpoint.classes, checkpoint.rate_hz)
    devices = parse_source("hapt:2,4,9", inputs)
    assert [d.name for d in devices] == ["hapt-s02", "hapt-s04", "hapt-s09"]


def test_uci_har_folder_windows_are_stitched_back_into_streams(tmp_path, tiny_checkpoint):
    from model.data.uci_har_streams import SIGNALS, read_uci_har_streams

    rng = np.random.default_rng(0)
    stream = rng.normal(size=(64 * 6, 6))  # 5 overlapping windows of one contiguous run...
    windows = [stream[i * 64 : i * 64 + 128] for i in range(5)]
    windows.append(rng.normal(size=(128, 6)))  # ...then a jump
    labels = [1, 1, 1, 2, 2, 3]
    for split, subjects in (("train", [7] * 6), ("test", [3])):
        folder = tmp_path / split / "Inertial Signals"
        folder.mkdir(parents=True)
        chosen = np.stack(windows if split == "train" else windows[:1])
        for k, name in enumerate(SIGNALS):
            np.savetxt(folder / f"{name}_{split}.txt", chosen[:, :, k])
        np.savetxt(tmp_path / split / f"y_{split}.txt", labels[: len(chosen)], fmt="%d")
        np.savetxt(tmp_path / split / f"subject_{split}.txt", subjects, fmt="%d")
    (recording,) = read_uci_har_streams(tmp_path, (7,))
    assert len(recording.timestamps) == 64 * 6 + 128
    np.testing.assert_allclose(recording.values[: 64 * 6], stream, atol=1e-12)
    assert np.diff(recording.timestamps).max() > 1.0  # the jump becomes a silence
    checkpoint = load_checkpoint(tiny_checkpoint)
    inputs = Inputs(checkpoint.input_channels, checkpoint.classes, checkpoint.rate_hz)
    (device,) = parse_source(f"uci-har:{tmp_path}:7", inputs)
    predictions = list(pipeline_for(checkpoint, [device], hop=64).run())
    assert [p.segment for p in predictions] == [0, 0, 0, 0, 0, 1]


class OneFleetTick(SourceBase):
    """A gateway that hands over one moment of its devices, then stays connected, silent."""

    name, status = "one tick", "sending"

    def __init__(self, batch: FleetBatch) -> None:
        super().__init__()
        self.batch = batch

    def run(self, emit, stop) -> None:
        emit(self.batch)
        stop.wait(60)


def test_a_fleet_batch_s_windows_are_inferred_at_once_not_after_max_wait(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    recording = load_hapt((2,))[0]
    n = checkpoint.window
    batch = FleetBatch(("a", "b"), np.tile(np.arange(n) / 50.0, (2, 1)), np.stack([recording.values[:n]] * 2),
                       recording.channels, arrival=time.monotonic(), rate_hz=50.0)  # fmt: skip
    scheduler = Scheduler(checkpoint.preprocessing, n, 32, checkpoint.rate_hz)
    pipeline = Pipeline([OneFleetTick(batch)], scheduler, InferenceEngine(TorchBackend(checkpoint.model)),
                        Decider(checkpoint.classes), max_wait_s=60.0)  # fmt: skip
    started, predictions = time.monotonic(), []
    for prediction in pipeline.run():
        predictions.append(prediction)
        if len(predictions) == 2:
            break
    pipeline.stop()
    assert [p.device for p in predictions] == ["a", "b"]
    assert time.monotonic() - started < 30  # not the 60 s that a window waits for company


def test_dashboard_fills_the_terminal_reads_without_colour_and_says_when_it_is_warming_up(tiny_checkpoint):
    from streamer.ui.dashboard import summary_table

    checkpoint = load_checkpoint(tiny_checkpoint)
    pipeline = pipeline_for(checkpoint, [Device("hapt-s02", [short_recording(30.0)])], hop=8)
    dashboard = Dashboard(pipeline, checkpoint.classes, "harstream test " + "x" * 200)  # a long title
    predictions = list(pipeline.run())
    widths = {}
    for prediction in predictions[:3]:  # the first windows: the filters are still settling
        dashboard.observe(prediction)
    console = Console(record=True, width=80)
    console.print(dashboard)
    assert "warming up" in console.export_text()
    for prediction in predictions[3:]:
        dashboard.observe(prediction)
    for width in (80, 120):
        console = Console(record=True, width=width)
        console.print(dashboard)
        lines = console.export_text().splitlines()
        assert max(len(line) for line in lines) <= width and "warming up" not in "\n".join(lines)
        widths[width] = len(next(line for line in lines if "model" in line).split("model", 1)[1].strip("│ "))
        assert any("← " in line and "now" in line for line in lines)  # the timeline's time scale
    assert len(predictions) > widths[120] > widths[80] >= 48  # the timeline grows with the terminal
    legend = "\n".join(lines).replace("\u00a0", " ")
    assert all(f"{dashboard.glyph[c]}  {c}" in legend for c in checkpoint.classes)
    assert len(set(dashboard.glyph.values())) == len(checkpoint.classes)  # one letter per class

    table = Console(record=True, width=80)
    table.print(summary_table({"accuracy": None, "latency_p99_ms": 12.3456, "windows": 3}))
    text = table.export_text()
    assert "None" not in text and "12.3 ms" in text and "12.3456" not in text


def test_a_unix_time_is_shown_as_a_time_of_day():
    from streamer.ui.dashboard import clock

    assert clock(1795915540.7).count(":") == 2 and "1795915540" not in clock(1795915540.7)
    assert clock(82.54) == "82.5 s"


def test_the_command_line_explains_itself(capsys, monkeypatch):

    assert main([]) == 0  # `harstream` alone: help with examples, not an argparse error
    out = capsys.readouterr().out
    assert "examples:" in out and "harstream replay" in out and "evaluate" in out
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("harstream ")
    assert main(["evaluate", "--split", "val"]) == 1  # the shipped model's refit has no validation split
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val split" in err and "empty" in err


def test_headless_without_jsonl_says_how_it_is_going(tiny_checkpoint, capsys, monkeypatch):
    import streamer.live

    monkeypatch.setattr(streamer.live, "PROGRESS_S", 0.0)
    argv = ["replay", "hapt:24", "--checkpoint", str(tiny_checkpoint), "--speed", "0", "--headless"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "windows" in err and "samples" in err and "dropped" in err
