"""The live terminal dashboard: small renderables over the pipeline's shared state.

One device or two: a panel each (activity, confidence bars, timeline with the truth under it,
signal sparkline). More: one compact table row per device. A footer shows the whole pipeline.
Everything fits the terminal's width: timelines grow with it, and each class has a letter as well
as a colour, so the timeline reads without colour too.
"""

from __future__ import annotations

import datetime
import time
from collections import deque
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from model.train.report import glyphs
from streamer.core.engine import UNCERTAIN
from streamer.core.types import Prediction
from streamer.ui.activity_colours import NULL, UNSURE, activity_colours

if TYPE_CHECKING:
    from streamer.core.pipeline import Pipeline
    from streamer.ui.today import TodayTotals

NULL_STYLE = NULL[0]  # OPPORTUNITY's "Null"
SPARK = "▁▂▃▄▅▆▇█"
MAX_PANELS = 2  # more devices than this collapse into a table
HISTORY = 240  # predictions kept per device: a timeline as wide as a wide terminal
# The first seconds of a stream, while the filters settle (the 0.3 Hz gravity split most of all):
# at the 19 session starts of the nine test subjects, standing still, windows ending before 7 s
# said WALKING_DOWNSTAIRS or _UPSTAIRS in 7-13 sessions; from 7.7 s, 14 said STANDING.
WARMUP_S = 7.5
EPOCH = 1e9  # a device time beyond this is Unix time (2001 on), shown as a time of day


def clock(t: float) -> str:
    """A device time: Unix time as a time of day, a recording's seconds as they are."""
    if t > EPOCH:
        return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S")
    return f"{t:.1f} s"


class Dashboard:
    """Reads the pipeline's state on every refresh; :meth:`observe` records predictions."""

    def __init__(self, pipeline: Pipeline, classes: tuple[str, ...], title: str,
                 today: TodayTotals | None = None) -> None:  # fmt: skip
        self.pipeline = pipeline
        self.classes = classes
        self.title = title
        self.today = today  # with --store: what each wearer did since midnight
        self.glyph = glyphs(classes)
        self.colours = activity_colours(classes, hex_colours=False)  # the same as history --plot's
        self.history: dict[str, deque[Prediction]] = {}
        self.width = 80  # the console's, at the last refresh

    def observe(self, prediction: Prediction) -> None:
        self.history.setdefault(prediction.device, deque(maxlen=HISTORY)).append(prediction)

    def warming(self, prediction: Prediction) -> bool:
        return prediction.index + 1 < WARMUP_S * self.pipeline.rate_hz

    def style(self, label: str | None) -> str:
        if label is None or label == UNCERTAIN:
            return UNSURE[0]
        colour = self.colours.get(label)
        return colour if colour is not None else activity_colours([label], hex_colours=False)[label]

    def dropped(self, device: str) -> int:
        """Everything lost for a device, from the wire to the model's output."""
        return sum(self.pipeline.dropped(device).values())

    # -- pieces ------------------------------------------------------------------------------
    def strip(self, labels: list[str | None]) -> Text:
        text = Text()
        for label in labels:
            glyph = self.glyph.get(label, "?") if label is not None else "·"
            text.append(glyph, style=f"bold black on {self.style(label)}" if label is not None else "grey42")
        return text

    def legend(self) -> Text:
        """Every class's letter and name, wrapped between entries: rich wraps at any whitespace,
        no-break spaces included, so the lines are broken here, where an entry ends."""
        lines: list[Text] = [Text()]
        for name in self.classes:
            entry = Text(f" {self.glyph[name]} ", style=f"bold black on {self.style(name)}")
            entry.append(f" {name}", style=self.style(name))
            if lines[-1].cell_len and lines[-1].cell_len + 2 + entry.cell_len > self.width:
                lines.append(Text())
            if lines[-1].cell_len:
                lines[-1].append("  ")
            lines[-1].append_text(entry)
        return Text("\n").join(lines)

    def scale(self, history: list[Prediction], cells: int) -> Text:
        """How far back the timeline reaches, in the device's own time."""
        shown = history[-cells:]
        span = shown[-1].t - shown[0].t if len(shown) > 1 else 0.0
        left, right = f"← {span:.0f} s", "now"
        return Text(left + " " * max(1, len(shown) - len(left) - len(right)) + right, style="grey50")

    def bars(self, prediction: Prediction, inner: int) -> Table:
        """A bar per class (the five likeliest when there are many) across the panel's ``inner`` width."""
        names = min(20, max(len(c) for c in self.classes))
        width = max(10, inner - names - 4 - 2)  # the name and percent columns, a space between each
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True, width=names)
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
        values = self.pipeline.signal(device)[-width:]
        if not values:
            return Text("")
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        return Text("".join(SPARK[int((v - low) / span * (len(SPARK) - 1))] for v in values), style="grey70")

    def today_line(self, device: str) -> Text | None:
        """Today's time per activity for a device, longest first, from the store."""
        if self.today is None:
            return None
        seconds = self.today.seconds.get(device)
        if not seconds:
            return Text(f"today: {self.today.status if self.today.status != 'ok' else 'nothing yet'}",
                        style="grey50")  # fmt: skip
        text = Text("today ", style="grey62")
        for activity, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
            text.append(f"{self.glyph.get(activity, '?')} ", style=f"bold {self.style(activity)}")
            text.append(f"{int(s // 3600)}:{int(s // 60 % 60):02d}:{int(s % 60):02d}  ", style="grey70")
        return text

    def device_panel(self, device: str) -> Panel:
        history = list(self.history.get(device, ()))
        if not history:
            return Panel(Text("waiting for the first window…", style="grey50"), title=device)
        latest = history[-1]
        cells = max(10, self.width - 12)  # the panel's border and the row names
        if self.warming(latest):
            head = Text(" warming up ", style="bold black on grey62")
            head.append(f"  the filters settle for {WARMUP_S:g} s after a (re)start", style="grey62")
        else:
            head = Text(f" {latest.label} ", style=f"bold black on {self.style(latest.label)}")
            head.append(f"  {latest.confidence * 100:.0f}%", style="bold")
        if latest.truth is not None:
            ok = latest.label == latest.truth
            head.append(f"   truth {latest.truth} ", style=self.style(latest.truth))
            head.append("✓" if ok else "✗", style="green" if ok else "red")
        timeline = Table.grid(padding=(0, 1))
        timeline.add_column(style="grey62", width=5)
        timeline.add_column(no_wrap=True)
        timeline.add_row("model", self.strip([p.label for p in history][-cells:]))
        if any(p.truth is not None for p in history):
            timeline.add_row("truth", self.strip([p.truth for p in history][-cells:]))
        timeline.add_row("", self.scale(history, cells))
        timeline.add_row("|acc|", self.sparkline(device, cells))
        dropped = self.dropped(device)
        subtitle = f"{clock(latest.t)} · {latest.latency_ms:.0f} ms"
        if dropped:
            subtitle += f" · dropped {dropped}"
        today = self.today_line(device)
        bars = self.bars(latest, self.width - 4)  # the panel's border and padding
        parts = [head, Text(""), bars, Text(""), timeline, *([today] if today else [])]
        return Panel(Group(*parts), title=device,
                     subtitle=subtitle, border_style=self.style(latest.label))  # fmt: skip

    def device_table(self) -> Table:
        name_width = max(6, *(len(d) for d in self.history))
        class_width = max(len(UNCERTAIN), len("warming up"), *(len(c) for c in self.classes))
        recent = max(10, self.width - name_width - 2 * class_width - 20)
        table = Table(box=None, expand=True)
        table.add_column("device", width=name_width, no_wrap=True)
        table.add_column("activity", width=class_width, no_wrap=True)
        table.add_column("conf", width=4, justify="right")
        table.add_column("truth", width=class_width, no_wrap=True)
        table.add_column("recent", width=recent, no_wrap=True)
        table.add_column("drop", width=6, justify="right")
        for device in sorted(self.history):
            history = list(self.history[device])
            latest = history[-1]
            dropped = self.dropped(device)
            truth = Text(latest.truth or "", style=self.style(latest.truth))
            if self.warming(latest):
                activity, confidence = Text("warming up", style="grey62"), ""
            else:
                activity = Text(latest.label, style=f"bold {self.style(latest.label)}")
                confidence = f"{latest.confidence * 100:.0f}%"
            table.add_row(device, activity, confidence, truth,
                          self.strip([p.label for p in history][-recent:]), str(dropped or ""))  # fmt: skip
        return table

    def footer(self) -> Text:
        stats = self.pipeline.stats
        now = time.monotonic()
        summary = self.pipeline.summary()
        p50, p99 = stats.latency_percentile(50), stats.latency_percentile(99)
        fill = self.pipeline.buffer_fill()
        text = Text()
        text.append(f"{stats.sample_rate.per_second(now):,.0f} samples/s  ")
        text.append(f"{stats.window_rate.per_second(now):,.1f} windows/s  ")
        if p50 is not None:
            text.append(f"latency p50 {p50:.0f} ms p99 {p99:.0f} ms  ")
        text.append("\n")  # two short lines rather than one that wraps at 80 columns
        if fill is not None:
            text.append(f"buffer {fill * 100:.0f}%  ")
        style = "bold red" if summary["dropped"] else "grey62"
        text.append(f"dropped {summary['dropped']}  gaps {summary['gaps']}", style=style)
        if stats.accuracy is not None:
            text.append(f"  accuracy {stats.accuracy * 100:.1f}% of {stats.judged}", style="bold")
        sources = " · ".join(f"{s.name}: {s.status}" for s in self.pipeline.sources[:4])
        if sources:
            text.append(f"\n{sources}", style="grey62")
        return text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self.width = options.max_width
        devices = sorted(self.history) or [s.name for s in self.pipeline.sources][:MAX_PANELS]
        if len(devices) <= MAX_PANELS:
            body: RenderableType = Group(*(self.device_panel(d) for d in devices))
        else:
            body = self.device_table()
        yield Text(fit_title(self.title, self.width), style="bold", no_wrap=True, overflow="ellipsis")
        yield body
        yield self.legend()
        yield self.footer()


LESS_IMPORTANT = ("window ", " Hz")  # tuning details: the first parts of a title to go


def fit_title(title: str, width: int) -> str:
    """``title`` ("harstream CMD · part · part · Ctrl-C to stop") in ``width`` columns: its first
    part (the command) and last (how to stop it) kept; middle parts dropped, tuning details first,
    then from the end; what is left of the middle shortened with "…" if that is still too long.

    >>> fit_title("harstream mqtt · mqtt://h:1883 har/+/imu · window 128 hop 32 · Ctrl-C to stop", 60)
    'harstream mqtt · mqtt://h:1883 har/+/imu · Ctrl-C to stop'
    >>> fit_title("harstream mqtt · mqtt://a-long-host-name:1883 har/+/imu · Ctrl-C to stop", 50)
    'harstream mqtt · mqtt://a-long-h… · Ctrl-C to stop'
    """
    parts = title.split(" · ")
    if len(title) <= width or len(parts) < 3:
        return title  # rich cuts what is still too long with "…"
    head, middle, tail = parts[0], parts[1:-1], parts[-1]
    order = [p for p in reversed(middle) if any(w in p for w in LESS_IMPORTANT)]
    order += [p for p in reversed(middle) if p not in order]
    for part in order:
        if len(" · ".join([head, *middle, tail])) <= width:
            return " · ".join([head, *middle, tail])
        if len(middle) == 1:
            break
        middle.remove(part)
    room = width - len(f"{head} ·  · {tail}")
    if room >= 8:  # enough to recognise the part by its start
        shown = " · ".join(middle)
        return f"{head} · {shown if len(shown) <= room else shown[:room - 1] + '…'} · {tail}"
    return f"{head} · {tail}" if len(f"{head} · {tail}") <= width else title


def summary_table(summary: dict) -> Table:
    """The one-screen summary printed when a run ends."""
    table = Table(title="harstream summary", show_header=False, box=None)
    table.add_column(style="grey62")
    table.add_column(style="bold")
    for key, value in summary.items():
        if value is None:
            value = "—"  # e.g. no accuracy: nothing had a known truth
        elif key.endswith("_ms"):
            value = f"{value:.1f} ms"
        elif key == "accuracy":
            value = f"{value:.4f}"
        elif isinstance(value, float):
            value = f"{value:.1f}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
        table.add_row(key.replace("_", " ").removesuffix(" ms"), str(value))
    return table
