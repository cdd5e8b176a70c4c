"""The live commands' history parts: episodes (always), their events on ``--jsonl`` (``--events``),
and the store (``--store``, ``--retain``). :mod:`streamer.commands.live_command` attaches them to every
pipeline it builds (:func:`attach_history`) and finishes them after the run (:func:`finish_history`);
the MQTT commands add their announcer (:mod:`streamer.sinks.announcer`) to the same
:class:`~streamer.sinks.episodes.Episodes`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Protocol

from model.strict_json import dumps
from streamer.commands.options import duration, nonempty, number
from streamer.sinks.episodes import HOLD_S, MIN_CONFIDENCE, Episodes, EpisodeSink, Event

if TYPE_CHECKING:
    from streamer.core.pipeline import Pipeline
    from streamer.sinks.store import Store


class HistorySettings(Protocol):
    """What :func:`attach_history` reads of a live command's options (``LiveOptions`` has them): a
    protocol, so that this module needs nothing of the command layer that builds on it."""

    store: str | None
    retain: str | None
    events: bool
    jsonl: bool
    episode_hold_s: float
    episode_confidence: float


def add_history_options(p: argparse.ArgumentParser) -> None:
    """``--store``, ``--retain``, ``--events`` and the episodes' hysteresis, for every live command."""
    group = p.add_argument_group("history")
    group.add_argument("--store", metavar="PATH_OR_URL", type=nonempty("store"),
                       help="keep every prediction and episode: a SQLite file (history.db) or postgresql://...")
    group.add_argument("--retain", metavar="AGE", type=duration,
                       help="with --store: prune stored predictions older than this (30d, 12h; episodes "
                       "are kept; default: keep all)")
    group.add_argument("--events", action="store_true",
                       help="with --jsonl, also a line per episode start and end")
    group.add_argument("--episode-hold", dest="episode_hold_s", type=number(0, 86400, unit="s"),
                       default=HOLD_S, metavar="SECONDS",
                       help="seconds a new label must hold before an episode switches (default %(default)g)")
    group.add_argument("--episode-confidence", type=number(0, 1), default=MIN_CONFIDENCE,
                       metavar="FRACTION",
                       help="windows (0 to 1) less sure than this never switch an episode (default "
                       "%(default)g)")


def attach_history(options: HistorySettings, pipeline: Pipeline, hop_s: float) -> Episodes:
    """The pipeline's :class:`Episodes` sink, with the store and the JSON-lines events attached as
    ``options`` ask; a --store that names no store raises StoreError (one line)."""
    episodes = Episodes(hop_s, hold_s=options.episode_hold_s, min_confidence=options.episode_confidence)
    if options.store:
        from streamer.sinks.store import StoreSink, open_store

        # A replay faster than real time would be stored ahead of the wall clock: moved back so that
        # it ends when its run would have played it, at the latest (its own durations kept).
        lead = max((s.lead_s() for s in pipeline.sources if hasattr(s, "lead_s")), default=0.0)
        sink = StoreSink(open_store(options.store, options.retain), hop_s, wall_start=time.time() - lead)
        episodes.sinks.append(sink)
        episodes.store = sink.store  # type: ignore[attr-defined]  # what finish_history closes
    if options.jsonl and options.events:
        episodes.sinks.append(EventLines())
    pipeline.sinks.append(episodes)
    return episodes


class EventLines(EpisodeSink):
    """``--events``: a JSON line on stdout per episode start and end."""

    def event(self, event: Event) -> None:
        sys.stdout.write(dumps({"device": event.device, **event.to_json()}) + "\n")  # one call: see json_line
        sys.stdout.flush()


def episodes_of(pipeline: Pipeline) -> Episodes | None:
    return next((sink for sink in pipeline.sinks if isinstance(sink, Episodes)), None)


def store_of(pipeline: Pipeline) -> Store | None:
    episodes = episodes_of(pipeline)
    return getattr(episodes, "store", None)


def finish_history(pipeline: Pipeline) -> dict:
    """After the run: open episodes end (their events go out), the store writes what is queued;
    their tallies for the summary."""
    episodes = episodes_of(pipeline)
    if episodes is None:
        return {}
    episodes.close()
    tallies: dict = {}
    store = store_of(pipeline)
    if store is not None:
        store.close()  # what it could not write is said there, in one line, and counted
        tallies = store.summary()
    return tallies
