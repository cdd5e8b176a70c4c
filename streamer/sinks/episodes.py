"""Activity episodes and events: the stream of window predictions as what each wearer did, when.

A causal :class:`EpisodeTracker` per device (one :class:`Episodes` sink for the pipeline) turns
window predictions into episodes (start, end, activity, mean confidence). One odd window must not
split an episode, so a change of label is a *candidate* until it has held for ``hold_s`` seconds of
windows, each at least ``min_confidence`` sure; only then does the episode switch, and the switch is
dated back to the candidate's first window (when the change happened, not when it was believed).
A window of the current label, or one too unsure, ends a candidate: its windows stay in the current
episode. Like Google's Activity Recognition Transition API, sinks are told of changes
(:class:`Event`: ``start``/``end`` with the time it happened), not of every window.

Who hears of episodes: :class:`Episodes` is a pipeline sink (:class:`~streamer.sinks.base.SinkBase`)
that keeps sinks of its own, of the same kind (:class:`EpisodeSink`), and tells each the same four
things the pipeline tells it (each prediction, each device forgotten, the run's end, a summary),
plus two that only episodes make: each :class:`Event` and each ended :class:`Episode`. One list, one
protocol: the store, the MQTT announcer and the ``--events`` lines are all such sinks.

Times: a window's ``t`` is its last sample's; each window stands for the ``hop_s`` seconds before it
(the time it adds to the stream), so an episode runs from its first window's ``t - hop_s`` to its last
window's ``t``, and the windows of one label add up to the time spent in it.

An episode ends at its last window when the device falls silent for ``gap_s``, and when its clock
breaks: the scheduler restarts a stream whose clock jumps back (or far ahead) by more than
:data:`streamer.core.limits.CLOCK_JUMP_S` and numbers the windows of each new clock (``Prediction.clock``);
the tracker ends the episode where that number changes. One rule, the scheduler's, so an episode
never spans two clocks and never ends before it starts.

>>> tracker = EpisodeTracker("w", hop_s=1.0, hold_s=3.0, min_confidence=0.5)
>>> labels = ["sit"] * 5 + ["walk"] + ["sit"] * 3 + ["walk"] * 4
>>> events = [e for k, a in enumerate(labels) for e in tracker.observe(float(k + 1), a, 0.9)]
>>> [(e.event, e.activity, e.t, e.duration_s) for e in events]
[('start', 'sit', 0.0, 0.0), ('end', 'sit', 9.0, 9.0), ('start', 'walk', 9.0, 0.0)]
>>> [(e.activity, e.start, e.end, e.windows) for e in tracker.close()]
[('sit', 0.0, 9.0, 9), ('walk', 9.0, 13.0, 4)]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from streamer.core.types import Prediction
from streamer.sinks.base import SinkBase

log = logging.getLogger(__name__)

# Defaults chosen on the HAPT test subjects (docs/history.md): a label must hold for
# HOLD_S seconds of windows, each at least MIN_CONFIDENCE sure, before an episode switches.
HOLD_S = 4.0
MIN_CONFIDENCE = 0.6
GAP_S = 10.0  # a device silent (on its own clock) this long ends its episode: nobody knows what came between


@dataclass
class Episode:
    device: str
    activity: str
    start: float  # seconds on the device's clock (the store puts a recording's on the wall clock)
    end: float
    confidence_sum: float = 0.0
    windows: int = 0
    open: bool = True

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def confidence(self) -> float:
        return self.confidence_sum / self.windows if self.windows else 0.0

    def to_json(self) -> dict:
        return {"device": self.device, "activity": self.activity, "start": round(self.start, 3),
                "end": round(self.end, 3), "seconds": round(self.seconds, 3),
                "confidence": round(self.confidence, 4)}  # fmt: skip


@dataclass(frozen=True)
class Event:
    """An episode began (``start``) or ended (``end``) at ``t``; ``duration_s`` is the episode's
    length so far (0 at its start)."""

    device: str
    event: str  # "start" | "end"
    activity: str
    t: float
    duration_s: float
    episode: Episode | None = field(default=None, repr=False, compare=False)  # the one begun or ended

    def to_json(self) -> dict:
        return {"event": self.event, "activity": self.activity, "t": round(self.t, 3),
                "duration_s": round(self.duration_s, 3)}  # fmt: skip


class EpisodeTracker:
    """One device's episodes, fed its predictions in order (:meth:`observe`)."""

    def __init__(self, device: str, hop_s: float, hold_s: float = HOLD_S,
                 min_confidence: float = MIN_CONFIDENCE, gap_s: float = GAP_S) -> None:  # fmt: skip
        self.device = device
        self.hop_s = hop_s
        self.hold_s = hold_s
        self.min_confidence = min_confidence
        self.gap_s = max(gap_s, 2 * hop_s)
        self.current: Episode | None = None
        self.candidate: Episode | None = None  # a new label, not yet held long enough
        self.finished: list[Episode] = []  # ended since the last take_finished()
        self.last_t: float | None = None
        self.clock = 0  # the scheduler's number of the device's clock (Prediction.clock)

    def observe(self, t: float, label: str, confidence: float, clock: int = 0) -> list[Event]:
        """The events that the window ending at ``t`` causes (none, mostly); ``clock``: the number
        the scheduler gave the device's clock (a new one restarts the stream and ends the episode)."""
        events: list[Event] = []
        last = self.last_t
        if last is not None and (clock != self.clock or t < last or t - last > self.gap_s):
            # a new clock, or a silence; time that runs back without a new clock (a caller other
            # than the scheduler, which never sends it) is a new clock too: never an episode backwards
            events += self._end_current()
        self.last_t, self.clock = t, clock
        current = self.current
        if current is None:
            self.current = Episode(self.device, label, t - self.hop_s, t, confidence, 1)
            return [*events, Event(self.device, "start", label, self.current.start, 0.0, self.current)]
        if label == current.activity or confidence < self.min_confidence:
            self._fold_candidate()
            current.end = t
            current.confidence_sum += confidence
            current.windows += 1
            return events
        candidate = self.candidate
        if candidate is None or candidate.activity != label:
            self._fold_candidate()
            candidate = self.candidate = Episode(self.device, label, t - self.hop_s, t, confidence, 1)
        else:
            candidate.end = t
            candidate.confidence_sum += confidence
            candidate.windows += 1
        if candidate.seconds + 1e-9 >= self.hold_s:  # held: the episode switches at the candidate's start
            current.end, self.candidate = candidate.start, None
            events += self._end_current()
            self.current = candidate
            events.append(Event(self.device, "start", candidate.activity, candidate.start, 0.0, candidate))
        return events

    def close(self) -> list[Episode]:
        """End the open episode (the stream ended, or the device was forgotten); every episode
        ended since the last :meth:`take_finished`."""
        self._end_current()
        return self.take_finished()

    def take_finished(self) -> list[Episode]:
        finished, self.finished = self.finished, []
        return finished

    def _fold_candidate(self) -> None:
        """A candidate that did not hold: its windows belong to the current episode."""
        if self.candidate is not None and self.current is not None:
            self.current.end = self.candidate.end
            self.current.confidence_sum += self.candidate.confidence_sum
            self.current.windows += self.candidate.windows
        self.candidate = None

    def _end_current(self) -> list[Event]:
        self._fold_candidate()
        current, self.current = self.current, None
        if current is None:
            return []
        current.open = False
        self.finished.append(current)
        return [Event(self.device, "end", current.activity, current.end, current.seconds, current)]


class EpisodeSink(SinkBase):
    """A sink of :class:`Episodes`: the pipeline's four (each prediction, told before the events it
    causes; forget; close; summary) and two more, no-ops unless overridden."""

    def event(self, event: Event) -> None:
        """An episode began or ended (its ``episode``: the one begun or ended)."""

    def finished(self, episode: Episode) -> None:
        """An episode ended: told once, after its ``end`` event."""


class Episodes(SinkBase):
    """A pipeline sink: one :class:`EpisodeTracker` per device, and its own :attr:`sinks`, told of
    every prediction, event and ended episode. A sink's failure is logged once and counted, and never
    stops the others or recognition."""

    def __init__(self, hop_s: float, hold_s: float = HOLD_S, min_confidence: float = MIN_CONFIDENCE) -> None:
        self.hop_s = hop_s
        self.hold_s = hold_s
        self.min_confidence = min_confidence
        self.trackers: dict[str, EpisodeTracker] = {}
        self.sinks: list[EpisodeSink] = []
        self.sink_errors = 0
        self.events = 0

    def __call__(self, prediction: Prediction) -> None:
        for sink in self.sinks:
            self._safely(sink, prediction)
        tracker = self.trackers.get(prediction.device)
        if tracker is None:
            tracker = self.trackers[prediction.device] = EpisodeTracker(
                prediction.device, self.hop_s, self.hold_s, self.min_confidence)
        events = tracker.observe(prediction.t, prediction.label, prediction.confidence, prediction.clock)
        self._tell(tracker, events)

    def current(self, device: str) -> Episode | None:
        tracker = self.trackers.get(device)
        return tracker.current if tracker is not None else None

    def forget(self, device: str) -> None:
        """The pipeline forgot ``device``: its episode ends, then every sink forgets it."""
        self._end(device)
        for sink in self.sinks:
            self._safely(sink.forget, device)

    def close(self) -> None:
        """The run ended: every open episode ends where its last window did, then every sink closes."""
        for device in list(self.trackers):
            self._end(device)
        for sink in self.sinks:
            self._safely(sink.close)

    def summary(self) -> dict:
        tallies: dict = {}
        for sink in self.sinks:
            tallies |= sink.summary()
        return tallies

    def _end(self, device: str) -> None:
        tracker = self.trackers.pop(device, None)
        if tracker is not None:
            self._tell(tracker, tracker._end_current())

    def _tell(self, tracker: EpisodeTracker, events: list[Event]) -> None:
        for event in events:
            self.events += 1
            for sink in self.sinks:
                self._safely(sink.event, event)
        for episode in tracker.take_finished():
            for sink in self.sinks:
                self._safely(sink.finished, episode)

    def _safely(self, call: Callable, *args) -> None:
        try:
            call(*args)
        except Exception as error:  # a sink's failure must not stop recognition
            if not self.sink_errors:
                log.error("episodes: %s failed: %s", getattr(call, "__qualname__", call), error)
            self.sink_errors += 1


def segments(times: list[float], labels: list[str | None], hop_s: float) -> list[tuple[str, float, float]]:
    """Runs of one label in a time-ordered series: ``(label, start, end)``, each window standing for
    the ``hop_s`` before it (how true segments are cut from window truths for docs/history.md's measure).

    >>> segments([1.0, 2.0, 3.0, 4.0], ["a", "a", "b", "b"], 1.0)
    [('a', 0.0, 2.0), ('b', 2.0, 4.0)]
    """
    out: list[tuple[str, float, float]] = []
    for t, label in zip(times, labels, strict=True):
        if label is None:
            continue
        if out and out[-1][0] == label and t - out[-1][2] <= 2 * hop_s:
            out[-1] = (label, out[-1][1], t)
        else:
            out.append((label, t - hop_s, t))
    return out
