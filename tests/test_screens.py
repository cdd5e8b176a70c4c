"""The screens at any width (issue 21, "Recording and the screens"): the dashboard's legend, title and
bars at 80, 120 and 200 columns; the MQTT command's connection line in the dashboard's source line;
``history --plot`` saying what it wrote, in the dashboard's colours; a fast replay never stored in
the future."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from streamer.core.pipeline import PipelineStats
from streamer.core.types import Prediction
from streamer.ui.dashboard import Dashboard

ROOT = Path(__file__).resolve().parent.parent
HAPT = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")
WIDTHS = (80, 120, 200)


class FakePipeline:
    """The small read API the dashboard uses (as tests/test_drops.py's ReadApiOnly)."""

    rate_hz = 50.0

    def __init__(self, sources: list | None = None) -> None:
        self.stats = PipelineStats()
        self.sources = sources or []

    def dropped(self, device: str | None = None) -> Counter:
        return Counter()

    def buffer_fill(self) -> float | None:
        return 0.1

    def signal(self, device: str) -> list[float]:
        return [1.0, 1.2, 0.9]

    def summary(self) -> dict:
        return {"dropped": 0, "gaps": 0}


def rendered(dashboard: Dashboard, width: int) -> list[str]:
    console = Console(record=True, width=width, height=60)
    console.print(dashboard)
    return console.export_text().splitlines()


def sure_of(label: str, classes: tuple[str, ...]) -> Prediction:
    probs = {c: (1.0 if c == label else 0.0) for c in classes}
    return Prediction("wrist", 20.0, label, 1.0, probs, None, 3.0, index=1000)


REPLAY_TITLE = ("harstream replay · uci_har_3x3 · 50 Hz · window 128 hop 32 · 4x real time · Ctrl-C to stop")
MQTT_TITLE = ("harstream mqtt · mqtt://broker.example.org:8883 har/+/imu · window 128 hop 32 · "
              "Ctrl-C to stop")  # fmt: skip


@pytest.mark.parametrize("width", WIDTHS)
def test_the_legend_wraps_between_entries_never_inside_one(width: int) -> None:
    classes = (*HAPT, "SIT_TO_STAND", "STAND_TO_LIE", "LIE_TO_SIT", "Brushing teeth")
    dashboard = Dashboard(FakePipeline(), classes, "legend")  # type: ignore[arg-type]
    dashboard.observe(sure_of("WALKING", classes))
    lines = [line.replace("\u00a0", " ") for line in rendered(dashboard, width)]
    entries = {name: f"{dashboard.glyph[name]}  {name}" for name in classes}
    for name, entry in entries.items():  # each entry whole, on one line
        assert any(entry in line for line in lines), (name, lines)
    assert max(len(line) for line in lines) <= width


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("title", [REPLAY_TITLE, MQTT_TITLE])
def test_the_title_fits_and_keeps_the_command_and_how_to_stop_it(width: int, title: str) -> None:
    dashboard = Dashboard(FakePipeline(), HAPT, title)  # type: ignore[arg-type]
    dashboard.observe(sure_of("SITTING", HAPT))
    first = rendered(dashboard, width)[0]
    assert len(first) <= width and "…" not in first.split(" · ")[-1]
    assert first.startswith(title.split(" · ")[0]) and first.endswith("Ctrl-C to stop"), first
    if width >= 120:
        assert first == title  # room for all of it: nothing dropped


def test_the_title_keeps_the_source_before_the_tuning_details_at_80_columns() -> None:
    dashboard = Dashboard(FakePipeline(), HAPT, MQTT_TITLE)  # type: ignore[arg-type]
    first = rendered(dashboard, 80)[0]
    assert "mqtt://broker.example.org:8883" in first and "window" not in first, first


@pytest.mark.parametrize("width", WIDTHS)
def test_a_certain_bar_spans_most_of_the_panel(width: int) -> None:
    dashboard = Dashboard(FakePipeline(), HAPT, "bars")  # type: ignore[arg-type]
    dashboard.observe(sure_of("STANDING", HAPT))
    line = next(line for line in rendered(dashboard, width) if "STANDING" in line and "█" in line)
    inner = width - 4  # the panel's border and padding
    names = max(len(c) for c in HAPT)
    assert line.count("█") >= max(0.6 * inner, inner - names - 8), (line.count("█"), inner)  # all the rest
    assert len(line) <= width


# -- the MQTT command's "connected" line ---------------------------------------------------------------
class FakeMqttSource:
    """What start_mqtt reads of an MqttSource: it connects at once."""

    name = "mqtt broker.example.org:1883"

    def __init__(self) -> None:
        self.status = "connecting"
        self.fatal = None
        self.fell_back = False
        self.connected = threading.Event()

    def start(self) -> None:
        self.connected.set()
        self.status = "connected"

    def wait_settled(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass


def mqtt_options():
    from streamer.core.mqtt_connection import MqttOptions, TopicPattern, parse_broker

    broker = parse_broker("mqtt://broker.example.org:1883")
    return MqttOptions(broker=broker, topic=TopicPattern.parse("har/+/imu"), client_id="harstream-test")


@pytest.mark.parametrize("headless", [False, True])
def test_connected_shows_in_the_dashboard_s_source_line_printed_only_headless(headless: bool, capsys) -> None:
    from streamer.cli.connect import start_mqtt

    source = FakeMqttSource()
    start_mqtt(mqtt_options(), HAPT, connect_timeout=1.0, headless=headless, source=source)  # type: ignore[arg-type]
    printed = capsys.readouterr()
    said = printed.out + printed.err
    if headless:
        assert "connected to mqtt://broker.example.org:1883" in said
    else:
        assert "connected" not in said  # nothing left above the dashboard
        assert "as harstream-test" in source.status and "har/+/imu" in source.status
        dashboard = Dashboard(FakePipeline([source]), HAPT, "mqtt")  # type: ignore[arg-type]
        footer = "\n".join(rendered(dashboard, 80)[-2:])
        assert "as harstream-test" in footer, footer


class AwayMqttSource(FakeMqttSource):
    """A broker that does not answer: it never connects."""

    def start(self) -> None:
        self.status = "connecting (retry 1): Connection refused"

    def wait_settled(self, timeout: float) -> bool:
        return False


def test_a_broker_out_of_reach_is_said_on_the_dashboard_not_above_it(capsys) -> None:
    from streamer.cli.connect import start_mqtt

    source = AwayMqttSource()
    start_mqtt(mqtt_options(), HAPT, connect_timeout=1.0, headless=False, source=source)  # type: ignore[arg-type]
    printed = capsys.readouterr()
    assert printed.out + printed.err == ""  # nothing left above the dashboard
    assert source.status.startswith("cannot reach the broker") and "retrying" in source.status


# -- history --plot ---------------------------------------------------------------------------------------
def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def stored_replay(checkpoint: Path, recording: Path, store: Path, speed: str = "0") -> float:
    """Replays ``recording`` into ``store``; the wall time when the run ended."""
    done = cli("replay", f"csv:{recording}", "--checkpoint", str(checkpoint), "--speed", speed, "--hop", "32",
               "--headless", "--store", str(store))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return time.time()


def test_a_replay_at_speed_0_is_stored_in_the_past_ending_at_the_run(tiny_checkpoint, short_recording,
                                                                     tmp_path) -> None:  # fmt: skip
    store = tmp_path / "history.db"
    started = time.time()
    ended = stored_replay(tiny_checkpoint, short_recording, store)
    with sqlite3.connect(store) as db:
        first, last = db.execute("SELECT MIN(t), MAX(t) FROM predictions").fetchone()
        latest_episode = db.execute("SELECT MAX(end_t) FROM episodes").fetchone()[0]
    assert last <= ended and latest_episode <= ended  # never in the future
    assert last >= started - 2.0  # it ends where the run was, not long before
    assert last - first > 5.0  # the recording's own durations are kept


def test_history_plot_says_what_it_wrote_in_one_line(tiny_checkpoint, short_recording, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    store, picture = tmp_path / "history.db", tmp_path / "day.png"
    stored_replay(tiny_checkpoint, short_recording, store)
    done = cli("history", "--store", str(store), "--plot", str(picture))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # not the whole text report
    assert re.fullmatch(rf"wrote {re.escape(str(picture))} \(1 device, \d\d:\d\d(:\d\d)?–\d\d:\d\d(:\d\d)?\)",
                        lines[0]), lines[0]  # fmt: skip
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = cli("history", "--store", str(store), "--plot", str(picture), "--json")
    assert "devices" in json.loads(as_json.stdout)  # --json still prints the object (the line: stderr)
    assert f"wrote {picture}" in as_json.stderr


def test_the_plot_and_the_dashboard_colour_an_activity_alike() -> None:
    from rich.color import Color

    from streamer.ui.activity_colours import activity_colours

    dashboard = Dashboard(FakePipeline(), (*HAPT, "Badminton"), "colours")  # type: ignore[arg-type]
    plotted = activity_colours(["LAYING", "Badminton", "WALKING"])  # a store holds a subset
    for name in plotted:
        on_screen = Color.parse(dashboard.style(name)).get_truecolor().hex
        assert on_screen == plotted[name], name
    assert len(set(activity_colours(HAPT).values())) == len(HAPT)


def test_the_plot_module_imports_neither_rich_nor_matplotlib() -> None:
    code = ("import sys, streamer.ui.history_plot; "
            "print(sorted(m for m in ('rich', 'matplotlib', 'torch') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
