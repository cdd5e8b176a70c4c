"""`harstream record --protocol`: the guided session's screen, and a clock that waits for a device."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from types import SimpleNamespace

from live_fixtures import Lines, harstream, mqtt_client
from rich.console import Console

from model.data.recordings import read_csv_recording
from streamer.cli.record import panel
from streamer.sinks.recorder import CsvRecorder
from streamer.sources.labelling import LabelBoard, RecordingProtocol, Step

CLASSES = ("UPRIGHT", "SHAKING")
CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
PROTOCOL = RecordingProtocol("demo", (Step("UPRIGHT", 10, "stand still"), Step("SHAKING", 30, "shake it")),
                             margin_s=1)  # fmt: skip


def screen(protocol: RecordingProtocol, now, tmp_path: Path) -> list[str]:
    """The recording panel as an 80-column terminal shows it, one string per line, borders off."""
    recorder = CsvRecorder(tmp_path / "rec", CHANNELS)
    console = Console(record=True, width=80)
    console.print(panel(SimpleNamespace(name="mqtt demo", status="connected"), recorder,
                        LabelBoard(protocol.classes, lambda _: None), protocol, now))  # fmt: skip
    recorder.close()
    return [line.strip("│╭╮╰╯─ ") for line in console.export_text().splitlines()]


def test_the_screen_shows_what_comes_next_on_a_line_of_its_own(tmp_path) -> None:
    lines = screen(PROTOCOL, PROTOCOL.at(5.0), tmp_path)
    assert "next: SHAKING — 30 s: shake it" in lines, lines
    assert any(line.startswith("UPRIGHT — 10 s") for line in lines), lines


def test_the_progress_bar_is_the_step_s_and_says_so(tmp_path) -> None:
    """5 s into a 10 s step of a 40 s session: the bar's line names the step and stands at half
    (the step's), not at an eighth (the session's)."""
    lines = screen(PROTOCOL, PROTOCOL.at(5.0), tmp_path)
    bar = [line for line in lines if "━" in line]
    assert len(bar) == 1, lines
    assert bar[0].startswith("step 1/2") and "50 %" in bar[0] and "5 s left" in bar[0], bar
    lines = screen(PROTOCOL, PROTOCOL.at(25.0), tmp_path)  # 15 s into the 30 s second step
    bar = [line for line in lines if "━" in line]
    assert bar[0].startswith("step 2/2") and "50 %" in bar[0] and "15 s left" in bar[0], bar
    assert any(line.startswith("next: done") for line in lines), lines


def test_before_any_device_has_sent_the_screen_says_so_and_the_clock_has_not_started(tmp_path) -> None:
    lines = screen(PROTOCOL, None, tmp_path)
    text = "\n".join(lines)
    assert "no device has sent a sample yet" in text, lines
    assert "step 1/2: UPRIGHT — 10 s" in text and "keys:" not in text, lines


def batch(t0: float, n: int) -> bytes:
    samples = [[0.0, -1.0, 0.0, 0.0, 0.0, 0.0]] * n
    return json.dumps({"t0": t0, "hz": 50, "channels": list(CHANNELS), "samples": samples}).encode()


def test_the_guided_clock_waits_for_the_first_device_s_first_sample(broker, tmp_path) -> None:
    """A 6 s protocol and no device for 9 s: the session is still waiting (and says so) rather than
    over with nothing recorded; once a device sends, every step is labelled as before."""
    protocol = tmp_path / "p.toml"
    protocol.write_text('margin_s = 1\n[[step]]\nactivity = "UPRIGHT"\nseconds = 3\n'
                        '[[step]]\nactivity = "SHAKING"\nseconds = 3\n')  # fmt: skip
    out = tmp_path / "rec"
    process = harstream("record", "--broker", broker.url, "--out", str(out), "--headless",
                        "--protocol", str(protocol))  # fmt: skip
    err = Lines(process.stderr)
    client = mqtt_client(broker.url)
    try:
        lines = err.wait(lambda ls: any("recording" in x for x in ls), 30)
        assert any("recording" in x for x in lines), lines
        time.sleep(9.0)  # longer than the whole protocol
        assert process.poll() is None, err.lines
        assert any("waiting for the first sample" in line for line in err.lines), err.lines
        assert not any("step 1/2" in line for line in err.lines), err.lines
        t = 0.0
        while process.poll() is None and t < 30:  # 0.1 s of samples every 0.1 s until the session ends
            client.publish("har/band-3/imu", batch(t, 5), qos=1)
            t += 0.1
            time.sleep(0.1)
        process.wait(20)
    finally:
        client.loop_stop()
        if process.poll() is None:
            process.kill()
    lines = err.wait(lambda ls: False, 1)
    assert process.returncode == 0, lines
    assert any("step 1/2: UPRIGHT — 3 s" in line for line in lines), lines
    labels = list(read_csv_recording(out / "band-3.csv", CHANNELS, CLASSES, 50.0).labels)
    runs = [labels[0]] + [b for a, b in itertools.pairwise(labels) if a != b]
    assert runs == [-1, 0, -1, 1, -1], runs  # the first step is there in full: the clock began with the data
    for cls in (0, 1):
        assert 30 <= labels.count(cls) <= 75, labels.count(cls)
