"""How well episodes match the true labelled segments: ``harstream history --agreement``.

From a store whose source had labels (a replay), the stored predictions are run again through the
episode tracker for a grid of hysteresis settings (hold seconds x minimum confidence), and each
result is compared with the true segments, cut from the same windows' true labels (a run of one
label; unlabelled windows, such as postural transitions, belong to no segment). Reported per
setting: episodes found vs true segments, and how far each true boundary (a segment's start) is
from the nearest episode boundary (median, and the share within 5 s). This is how the defaults
(:data:`streamer.sinks.episodes.HOLD_S`, :data:`streamer.sinks.episodes.MIN_CONFIDENCE`) were chosen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamer.sinks.episodes import EpisodeTracker, segments
from streamer.sinks.store import Target

HOLDS = (0.0, 2.0, 4.0, 6.0, 10.0)
CONFIDENCES = (0.0, 0.6, 0.8)


def stored_windows(target: Target) -> dict[str, list[tuple]]:
    """Each device's stored predictions, in time order: ``(t, seconds, label, confidence, truth)``."""
    connection = target.connect_readonly()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT device, t, seconds, label, confidence, truth FROM predictions "
                       "ORDER BY device, t")
        out: dict[str, list[tuple]] = {}
        for device, *row in cursor.fetchall():
            out.setdefault(device, []).append(tuple(row))
        return out
    finally:
        connection.close()


def agreement(windows: dict[str, list[tuple]], hold_s: float, min_confidence: float) -> dict[str, Any]:
    per_device = {}
    errors: list[float] = []
    for device, rows in windows.items():
        hop_s = rows[0][1]
        tracker = EpisodeTracker(device, hop_s, hold_s, min_confidence)
        for t, _, label, confidence, _ in rows:
            tracker.observe(t, label, 0.0 if confidence is None else confidence)
        episodes = tracker.close()
        truth = segments([r[0] for r in rows], [r[4] for r in rows], hop_s)
        found = np.array([e.start for e in episodes[1:]])
        for _, start, _ in truth[1:]:
            errors.append(float(np.min(np.abs(found - start))) if found.size else float("inf"))
        per_device[device] = {"episodes": len(episodes), "segments": len(truth)}
    finite = np.array(errors)
    return {
        "hold_s": hold_s,
        "min_confidence": min_confidence,
        "episodes": sum(d["episodes"] for d in per_device.values()),
        "segments": sum(d["segments"] for d in per_device.values()),
        "boundary_error_median_s": float(np.median(finite)) if finite.size else None,
        "boundaries_within_5s": float(np.mean(finite <= 5.0)) if finite.size else None,
        "devices": per_device,
    }


def agreement_grid(target: Target) -> list[dict]:
    windows = stored_windows(target)
    if not any(r[4] is not None for rows in windows.values() for r in rows):
        raise ValueError(f"the store {target.display} holds no true labels: --agreement needs a "
                         "labelled replay")
    return [agreement(windows, hold, confidence) for hold in HOLDS for confidence in CONFIDENCES]


def print_grid(grid: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("hold s", "min conf", "episodes", "true segments", "boundary error (median s)",
                  "boundaries within 5 s", title="episodes vs true segments")  # fmt: skip
    for row in grid:
        table.add_row(f"{row['hold_s']:g}", f"{row['min_confidence']:g}", str(row["episodes"]),
                      str(row["segments"]), f"{row['boundary_error_median_s']:.2f}",
                      f"{row['boundaries_within_5s']:.0%}")  # fmt: skip
    Console().print(table)
    first = grid[0]["devices"]
    shown = [r for r in grid if r["min_confidence"] == 0.6]
    per = Table("device", *[f"hold {r['hold_s']:g} s" for r in shown], "true segments",
                title="episodes per subject (min confidence 0.6)")  # fmt: skip
    for device in first:
        per.add_row(device, *[str(r["devices"][device]["episodes"]) for r in shown],
                    str(first[device]["segments"]))  # fmt: skip
    Console().print(per)
