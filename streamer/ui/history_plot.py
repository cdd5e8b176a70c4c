"""``harstream history --plot FILE.png``: one timeline per device, the model's episodes coloured by
activity, the ground truth under them when the source had labels, time of day on the axis.

matplotlib is an optional extra (``pip install -e '.[plot]'``); without it ``--plot`` is one line.
The activities' colours are the dashboard's (:mod:`streamer.ui.activity_colours`); nothing heavy is
imported until a plot is drawn.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from model.extras import missing_package
from streamer.ui.activity_colours import activity_colours


def segments(rows: list[list]) -> list[tuple[float, float, str]]:
    """Consecutive ``[t, seconds, label]`` rows of one label merged into (start, length, label);
    a row ends at its ``t`` and covers its ``seconds`` (the window's hop) before it.

    >>> segments([[10, 2, "A"], [12, 2, "A"], [14, 2, "B"], [30, 2, "B"]])
    [(8, 4, 'A'), (12, 2, 'B'), (28, 2, 'B')]
    """
    out: list[tuple[float, float, str]] = []
    for t, seconds, label in rows:
        if label is None:
            continue
        start = t - seconds
        if out and out[-1][2] == label and abs(out[-1][0] + out[-1][1] - start) < 1e-6:
            out[-1] = (out[-1][0], out[-1][1] + seconds, label)
        else:
            out.append((start, seconds, label))
    return out


def plot_history(history: dict, path: Path) -> Path:
    try:
        import matplotlib
    except ImportError as error:
        raise ValueError(missing_package(error) or str(error)) from None
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    devices = history["devices"]
    if not devices:
        raise ValueError("nothing to plot: the store holds no history in that time")
    activities = sorted({e["activity"] for d in devices.values() for e in d["episodes"]}
                        | {r[2] for d in devices.values() for r in d.get("truth", []) if r[2]})  # fmt: skip
    colour = activity_colours(activities)  # hex: the dashboard's colours
    day = mdates.date2num(datetime.datetime.fromtimestamp(0))  # the Unix epoch in matplotlib's days, local
    to_days = 1 / 86400.0

    rows = []  # (device, kind, [(start_s, length_s, label)])
    for device, entry in devices.items():
        rows.append((device, "model", [(e["start"], e["seconds"], e["activity"]) for e in entry["episodes"]]))
        if entry.get("truth"):
            rows.append((device, "truth", segments(entry["truth"])))
    fig, ax = plt.subplots(figsize=(12, 0.9 + 0.45 * len(rows)))
    for y, (_, _, spans) in enumerate(rows):
        for label in {s[2] for s in spans}:
            bars = [(day + start * to_days, length * to_days) for start, length, lab in spans if lab == label]
            ax.broken_barh(bars, (y - 0.4, 0.8), facecolors=colour[label])
    ax.set_yticks(range(len(rows)), [f"{device} · {kind}" for device, kind, _ in rows])
    ax.invert_yaxis()
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.set_xlabel("time of day")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[a]) for a in activities]
    # above the timelines: below, it ran into the axis label whatever the number of rows
    ax.legend(handles, activities, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=min(6, len(activities)), frameon=False)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend outside the axes included
    plt.close(fig)
    return Path(path)


def span(history: dict) -> tuple[float, float]:
    """The earliest start and the latest end of what the plot shows, seconds since the epoch."""
    starts, ends = [], []
    for entry in history["devices"].values():
        starts += [e["start"] for e in entry["episodes"]] + [t - s for t, s, _ in entry.get("truth", [])]
        ends += [e["end"] for e in entry["episodes"]] + [t for t, _, _ in entry.get("truth", [])]
    return min(starts, default=0.0), max(ends, default=0.0)


def wrote_line(history: dict, path: Path) -> str:
    """What ``--plot`` says instead of the text report: ``wrote day.png (2 devices, 08:00:00–17:30:00)``
    (with the dates when the span crosses midnight)."""
    first, last = (datetime.datetime.fromtimestamp(t) for t in span(history))
    form = "%H:%M:%S" if first.date() == last.date() else "%Y-%m-%d %H:%M"
    n = len(history["devices"])
    return f"wrote {path} ({n} device{'s' if n != 1 else ''}, {first.strftime(form)}–{last.strftime(form)})"
