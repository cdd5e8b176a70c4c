"""The live terminal dashboard: small renderables over the pipeline's shared state.

One device or two: a panel each (activity, confidence bars, timeline with the truth under it,
signal sparkline). More: one compact table row per device. A footer shows the whole pipeline.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from streamer.engine import UNCERTAIN
from streamer.types import Prediction

if TYPE_CHECKING:
    from streamer.pipeline import Pipeline

PALETTE = ("green3", "dodger_blue1", "medium_purple1", "gold1", "orange1", "deep_pink2", "cyan2",
           "spring_green2", "light_salmon1", "plum2", "khaki1", "sky_blue1", "pale_green1",
           "hot_pink", "steel_blue1", "wheat1", "aquamarine1", "light_coral")  # fmt: skip
NULL_STYLE = "grey50"
SPARK = "▁▂▃▄▅▆▇█"
MAX_PANELS = 2  # more devices than this collapse into a table


class Dashboard:
    """Reads the pipeline's state on every refresh; :meth:`observe` records predictions."""

    def __init__(self, pipeline: Pipeline, classes: tuple[str, ...], title: str, timeline: int = 48) -> None:
        self.pipeline = pipeline
        self.classes = classes
        self.title = title
        self.timeline_length = timeline
        self.history: dict[str, deque[Prediction]] = {}

    def observe(self, prediction: Prediction) -> None:
        self.history.setdefault(prediction.device, deque(maxlen=self.timeline_length)).append(prediction)

    def style(self, label: str | None) -> str:
        if label is None or label == UNCERTAIN:
            return "grey42"
        if label.lower() == "null":
            return NULL_STYLE
        try:
            return PALETTE[self.classes.index(label) % len(PALETTE)]
        except ValueError:
            return "white"

    def dropped(self, device: str) -> int:
        """Everything lost for a device: by the scheduler and, before it, by the wire decoder."""
        stream = self.pipeline.scheduler.devices.get(device)
        bad_input = self.pipeline.stats.bad_input.get(device)
        scheduled = stream.counters.dropped_total if stream else 0
        return scheduled + (sum(bad_input.values()) if bad_input else 0)

    # -- pieces ------------------------------------------------------------------------------
    def strip(self, labels: list[str | None], glyph: str = "█") -> Text:
        text = Text()
        for label in labels:
            text.append(glyph if label is not None else "·", style=self.style(label))
        return text

    def bars(self, prediction: Prediction, width: int) -> Table:
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True, width=min(20, max(len(c) for c in self.classes)))
        table.add_column(no_wrap=True)
        table.add_column(justify="right", width=4)
        probs = sorted(prediction.probs.items(), key=lambda kv: -kv[1])
        shown = probs[:5] if len(self.classes) > 8 else [(c, prediction.probs[c]) for c in self.classes]
        for name, p in shown:
            filled = round(p * width)
            bar = Text("█" * filled, style=self.style(name)) + Text("░" * (width - filled), style="grey23")
            table.add_row(Text(name, style=self.style(name)), bar, f"{p * 100:3.0f}%")
        return table

    def sparkline(self, device: str, width: int) -> Text:
        stream = self.pipeline.scheduler.devices.get(device)
        values = list(stream.signal_magnitude)[-width:] if stream else []
        if not values:
            return Text("")
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        return Text("".join(SPARK[int((v - low) / span * (len(SPARK) - 1))] for v in values), style="grey70")

    def device_panel(self, device: str) -> Panel:
        history = list(self.history.get(device, ()))
        if not history:
            return Panel(Text("waiting for the first window…", style="grey50"), title=device)
        latest = history[-1]
        head = Text(f" {latest.label} ", style=f"bold black on {self.style(latest.label)}")
        head.append(f"  {latest.confidence * 100:.0f}%", style="bold")
        if latest.truth is not None:
            ok = latest.label == latest.truth
            head.append(f"   truth {latest.truth} ", style=self.style(latest.truth))
            head.append("✓" if ok else "✗", style="green" if ok else "red")
        timeline = Table.grid(padding=(0, 1))
        timeline.add_column(style="grey62", width=5)
        timeline.add_column(no_wrap=True)
        timeline.add_row("model", self.strip([p.label for p in history]))
        if any(p.truth is not None for p in history):
            timeline.add_row("truth", self.strip([p.truth for p in history]))
        timeline.add_row("|acc|", self.sparkline(device, self.timeline_length))
        dropped = self.dropped(device)
        subtitle = f"t {latest.t:.1f}s · {latest.latency_ms:.0f} ms"
        if dropped:
            subtitle += f" · dropped {dropped}"
        return Panel(Group(head, Text(""), self.bars(latest, 24), Text(""), timeline), title=device,
                     subtitle=subtitle, border_style=self.style(latest.label))  # fmt: skip

    def device_table(self) -> Table:
        table = Table("device", "activity", "conf", "truth", "recent", "drop", expand=True, box=None)
        for device in sorted(self.history):
            history = list(self.history[device])
            latest = history[-1]
            dropped = self.dropped(device)
            truth = Text(latest.truth or "", style=self.style(latest.truth))
            table.add_row(device, Text(latest.label, style=f"bold {self.style(latest.label)}"),
                          f"{latest.confidence * 100:.0f}%", truth,
                          self.strip([p.label for p in history][-20:]), str(dropped or ""))  # fmt: skip
        return table

    def footer(self) -> Text:
        stats = self.pipeline.stats
        now = time.monotonic()
        summary = self.pipeline.summary()
        p50, p99 = stats.latency_percentile(50), stats.latency_percentile(99)
        fills = [s.ring.fill for s in self.pipeline.scheduler.devices.values()]
        text = Text()
        text.append(f"{stats.sample_rate.per_second(now):,.0f} samples/s  ")
        text.append(f"{stats.window_rate.per_second(now):,.1f} windows/s  ")
        if p50 is not None:
            text.append(f"latency p50 {p50:.0f} ms p99 {p99:.0f} ms  ")
        text.append("\n")  # two short lines rather than one that wraps at 80 columns
        if fills:
            text.append(f"buffer {sum(fills) / len(fills) * 100:.0f}%  ")
        style = "bold red" if summary["dropped"] else "grey62"
        text.append(f"dropped {summary['dropped']}  gaps {summary['gaps']}", style=style)
        if stats.accuracy is not None:
            text.append(f"  accuracy {stats.accuracy * 100:.1f}% of {stats.judged}", style="bold")
        sources = " · ".join(f"{s.name}: {s.status}" for s in self.pipeline.sources[:4])
        if sources:
            text.append(f"\n{sources}", style="grey62")
        return text

    def __rich__(self) -> RenderableType:
        devices = sorted(self.history) or [s.name for s in self.pipeline.sources][:MAX_PANELS]
        if len(devices) <= MAX_PANELS:
            body: RenderableType = Group(*(self.device_panel(d) for d in devices))
        else:
            body = self.device_table()
        header = Text(self.title, style="bold")
        return Group(header, body, self.footer())


def summary_table(summary: dict) -> Table:
    """The one-screen summary printed when a run ends."""
    table = Table(title="harstream summary", show_header=False, box=None)
    table.add_column(style="grey62")
    table.add_column(style="bold")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
        table.add_row(key.replace("_", " "), str(value))
    return table
