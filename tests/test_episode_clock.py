"""One rule for a stream restart: when the scheduler restarts a device's stream because its clock
jumped (back, or far ahead), the episode in progress ends at its last window; an episode never ends
before it starts, in the events, the store or `harstream history`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from live_fixtures import ROOT, Heard

from model.data.recordings import read_csv_recording
from model.data.signals import HAPT_CHANNELS, PreprocessingSpec
from streamer.cli.main import build_parser
from streamer.core.scheduler import Scheduler
from streamer.core.source import Emit, SourceBase
from streamer.core.types import Prediction, SampleBatch
from streamer.live import DEFAULT_CHECKPOINT, LiveOptions, assemble, open_checkpoint
from streamer.sinks.episodes import Episodes, EpisodeTracker, Event

SEGMENT_S = 6.0  # of samples between two clock jumps
JUMPS_BACK_S = (7.0, 6.0, 9.0, 8.0)  # more than the scheduler's CLOCK_JUMP_S, less than the tracker's gap


class JumpingClock(SourceBase):
    """A recording played as one device whose clock jumps back after every SEGMENT_S seconds."""

    name = "jumping clock"

    def __init__(self, values: np.ndarray, rate_hz: float, jumps: tuple[float, ...]) -> None:
        super().__init__()
        per_segment = int(SEGMENT_S * rate_hz)
        self.batches: list[SampleBatch] = []
        t0 = 1000.0
        for k in range(len(jumps) + 1):
            part = values[k * per_segment : (k + 1) * per_segment]
            t = t0 + np.arange(len(part)) / rate_hz
            for i in range(0, len(part), 25):  # half-second messages
                self.batches.append(SampleBatch("wrist", t[i : i + 25], part[i : i + 25], HAPT_CHANNELS, 0.0))
            if k < len(jumps):
                t0 = t0 + SEGMENT_S - jumps[k]

    def run(self, emit: Emit, stop: threading.Event) -> None:
        for batch in self.batches:
            if stop.is_set():
                return
            emit(SampleBatch(batch.device, batch.timestamps, batch.values, batch.channels, time.monotonic()))


def test_a_clock_that_jumps_back_ends_the_episode_and_no_duration_is_negative(short_recording,
                                                                              tmp_path) -> None:  # fmt: skip
    store = tmp_path / "history.db"
    argv = ["replay", "--checkpoint", str(DEFAULT_CHECKPOINT), "--hop", "16", "--store", str(store),
            "--episode-hold", "1", "--episode-confidence", "0.3"]  # fmt: skip
    options = LiveOptions.from_args(build_parser().parse_args(argv))
    ck = open_checkpoint(DEFAULT_CHECKPOINT)
    recording = read_csv_recording(short_recording, HAPT_CHANNELS, ck.classes, 50.0)
    run = assemble(options, ck, [JumpingClock(recording.values, 50.0, JUMPS_BACK_S)])
    events: list[Event] = []
    run.episodes.sinks.append(Heard(event=events.append))
    predictions = list(run.pipeline.run())
    run.finish()

    assert events and all(e.duration_s >= 0 for e in events), [e for e in events if e.duration_s < 0]
    ends = [e for e in events if e.event == "end"]
    assert all(e.t >= e.episode.start for e in ends)
    assert len(ends) >= len(JUMPS_BACK_S) + 1  # every restart ended the episode in progress
    assert run.pipeline.summary()["clock_jumps"] == len(JUMPS_BACK_S)  # the scheduler's restarts
    assert len({p.clock for p in predictions}) == len(JUMPS_BACK_S) + 1  # each window knows its clock
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT start_t, end_t FROM episodes").fetchall()
    assert len(rows) == len(ends) and all(end >= start for start, end in rows), rows
    shown = subprocess.run([sys.executable, "-m", "streamer.cli.main", "history", "--store", str(store),
                            "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    stored = json.loads(shown.stdout)["devices"]["wrist"]["episodes"]
    assert stored and all(e["seconds"] >= 0 for e in stored)
    table = subprocess.run([sys.executable, "-m", "streamer.cli.main", "history", "--store", str(store)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    # a negative duration under an hour prints as -1:59:58 (history.hms)
    assert table.returncode == 0 and "wrist" in table.stdout and "-1:59:" not in table.stdout


# -- any clock at all --------------------------------------------------------------------------------
IDENTITY = PreprocessingSpec(kind="identity", inputs=("x", "y"))
# a step between two messages: on time, a short silence (a gap), or a clock that jumps back or ahead
STEPS = st.one_of(st.just(0.02), st.floats(0.1, 12.0), st.floats(-20.0, -0.01), st.floats(5.0, 30.0))


def label_of(t: float) -> tuple[str, float]:
    """A made-up model: labels that change every few seconds, sometimes unsure."""
    k = int(t // 3.0)
    return "abc"[k % 3], 0.4 + 0.5 * ((k * 7) % 5) / 4


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(STEPS, st.integers(1, 40)), min_size=1, max_size=40),
       arrival_steps=st.lists(st.floats(0.0, 2.0), min_size=40, max_size=40))  # fmt: skip
def test_no_episode_or_event_ever_has_a_negative_duration(steps, arrival_steps) -> None:
    scheduler = Scheduler(IDENTITY, window=8, hop=4, rate_hz=50.0)
    episodes = Episodes(hop_s=4 / 50.0, hold_s=0.5, min_confidence=0.5)
    events: list[Event] = []
    finished = []
    episodes.sinks.append(Heard(event=events.append, finished=finished.append))
    t, arrival = 100.0, 0.0
    for (step, n), elapsed in zip(steps, arrival_steps, strict=False):
        t, arrival = t + step, arrival + elapsed
        times = t + np.arange(n) / 50.0
        t = float(times[-1])
        batch = SampleBatch("d", times, np.zeros((n, 2)), ("x", "y"), arrival, rate_hz=50.0)
        for window in scheduler.push(batch):
            label, confidence = label_of(window.t)
            episodes(Prediction("d", window.t, label, confidence, {}, None, 0.0, window.index, window.segment,
                                clock=window.clock))  # fmt: skip
    episodes.close()
    assert all(e.duration_s >= 0 for e in events)
    assert all(e.end >= e.start for e in finished)
    assert len(finished) == sum(e.event == "end" for e in events)


@settings(max_examples=200, deadline=None)
@given(windows=st.lists(st.tuples(st.floats(0.0, 30.0), st.sampled_from("ab")), max_size=60))
def test_a_tracker_fed_any_times_never_ends_an_episode_before_it_starts(windows) -> None:
    """Without the scheduler to say the clock broke (a direct caller), time that runs back still
    ends the episode rather than stretch it backwards."""
    tracker = EpisodeTracker("d", hop_s=1.0, hold_s=2.0, min_confidence=0.5)
    events = [e for t, label in windows for e in tracker.observe(t, label, 0.9)]
    episodes = tracker.close()
    assert all(e.duration_s >= 0 for e in events)
    assert all(e.end >= e.start for e in episodes)


def test_a_new_clock_ends_the_episode_even_when_its_times_run_on() -> None:
    """A clock that jumped far ahead (the scheduler's decision, carried by the window) is a new
    clock: the episode ends at its last window, although the next time is only seconds later."""
    tracker = EpisodeTracker("d", hop_s=1.0, hold_s=2.0, min_confidence=0.5)
    for k in range(5):
        tracker.observe(10.0 + k, "a", 0.9)
    events = tracker.observe(20.0, "a", 0.9, clock=1)
    assert [(e.event, e.t) for e in events] == [("end", 14.0), ("start", 19.0)]
    assert [(e.start, e.end) for e in tracker.close()] == [(9.0, 14.0), (19.0, 20.0)]
