"""JSON lines on stdout, the live commands' machine-readable output (``--jsonl``): a prediction, an
episode's start or end (``--events``), the summary; strict JSON (model/strict_json.py), one line each."""

from __future__ import annotations

import sys

from model.strict_json import dumps
from streamer.sinks.episodes import Event


def json_line(record: dict) -> None:
    """One JSON line on stdout, written in one call: print() writes the text and its newline
    separately, and a SIGTERM (a KeyboardInterrupt) between the two glued the summary onto the last
    prediction's line."""
    sys.stdout.write(dumps(record) + "\n")
    sys.stdout.flush()


def print_event(event: Event) -> None:
    json_line({"device": event.device, **event.to_json()})
