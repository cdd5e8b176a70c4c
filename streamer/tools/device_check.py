"""``harstream check``: listen to one wearable for a few seconds and say whether the model fits it.

What it measures (:func:`analyse`, a pure function of the batches): the rate and the jitter of the
device's timestamps, gaps and repeated or backward times, the channels present, each channel's
range, a guess of the units (acceleration whose magnitude sits near 1 while still is in g, near 9.8
in m/s²; angular rate past 15 is in deg/s, rad/s otherwise) and the direction of gravity during the
stillest second. Against a checkpoint (its rate, channels and units, and the gravity direction of its
training data, ``CheckpointMeta.gravity``) each is a check with the fix for a mismatch.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from model.data.recordings import measured_rate
from model.data.signals import ACC, GYRO
from streamer.core.limits import GAP_PERIODS, RATE_RATIO, value_limits
from streamer.core.mqtt_connection import MqttOptions
from streamer.core.types import SampleBatch
from streamer.sources.mqtt import MqttSource

STILL_G = 0.05  # the acceleration magnitude's std (g) over a second below which the wearer is still
ORIENTATION_DEG = 45.0  # gravity further than this from the model's is a different pose
AXES = ("x", "y", "z")
LOST_SHARE = 0.05  # more of a channel's readings lost (null) than this fails the check


@dataclass
class Listened:
    """What one device sent during the check."""

    batches: list[SampleBatch] = field(default_factory=list)
    messages: int = 0
    announced: set[str] = field(default_factory=set)  # channel names its messages carry
    units: set[str] = field(default_factory=set)  # "unit" values its JSON announces
    dropped: Counter = field(default_factory=Counter)  # reason -> messages the source dropped


def axis_name(vector: np.ndarray) -> str:
    i = int(np.argmax(np.abs(vector)))
    return ("+" if vector[i] >= 0 else "-") + AXES[i]


def _limits(names: tuple[str, ...], channels: tuple[str, ...], units: tuple[str, ...]) -> np.ndarray:
    """The largest |value| of each channel the device sent: by the model's unit where it names one,
    else the widest a unit of the channel's kind allows (acc in m/s², gyro in deg/s)."""
    want = dict(zip(channels, units, strict=False))
    widest = {"acc_": "m/s2", "gyro_": "deg/s"}
    guess = [want.get(c) or next((u for p, u in widest.items() if c.startswith(p)), "") for c in names]
    return value_limits(guess, len(names))


def _timing(t: np.ndarray, report: dict) -> float:
    """The device's rate, jitter, repeated or backward times and gaps, into ``report``; the rate."""
    rate = measured_rate(t)  # a least-squares slope: jitter does not move it, a median step would
    report["rate_hz"] = round(rate, 2) if np.isfinite(rate) else None
    dt = np.diff(t)
    if not np.isfinite(rate):
        report.update(jitter_ms=None, duplicates=int(np.sum(dt <= 0)), gaps=0)
        return rate
    period = 1.0 / rate
    steps = dt[np.abs(dt) <= GAP_PERIODS * period]
    report["jitter_ms"] = round(float(np.std(steps)) * 1000, 2) if len(steps) else None
    report["duplicates"] = int(np.sum(dt <= 0))
    report["gaps"] = int(np.sum(dt > GAP_PERIODS * period))
    return rate


def _values(x: np.ndarray, names: tuple[str, ...], limits: np.ndarray, report: dict) -> np.ndarray:
    """Lost readings, ranges and values beyond any wearable's range, into ``report``; the readings
    that can be used (NaN where lost or beyond range), which is all the unit guess may look at."""
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        beyond = finite & (np.abs(x) > limits)
    report["lost"] = {c: int(n) for c, n in zip(names, (~finite).sum(axis=0), strict=True) if n}
    report["beyond_range"] = {c: int(n) for c, n in zip(names, beyond.sum(axis=0), strict=True) if n}
    report["ranges"] = {}
    for i, c in enumerate(names):  # None: every reading lost (an all-null device)
        kept = x[finite[:, i], i]
        report["ranges"][c] = [round(float(v), 4) for v in (kept.min(), kept.max())] if len(kept) else None
    return np.where(finite & ~beyond, x, np.nan)


def _gravity(a: np.ndarray, rate: float, report: dict, guessed: dict[str, str]) -> bool | None:
    """The acc unit guess and the direction of gravity in the stillest second (over readings that are
    all there); whether the wearer was still then (None: not enough readings)."""
    a = a[np.isfinite(a).all(axis=1)]
    if len(a) < 4:
        return None
    norm = np.linalg.norm(a, axis=1)
    second = max(2, round(rate)) if np.isfinite(rate) else 2
    scale = 9.80665 if float(np.median(norm)) > 4.0 else 1.0
    guessed["acc"] = "m/s2" if scale > 1 else "g"
    if len(norm) < second:
        return None
    spread = np.lib.stride_tricks.sliding_window_view(norm / scale, second).std(axis=1)
    start = int(np.argmin(spread))
    still = bool(spread[start] < STILL_G)
    g = a[start : start + second].mean(axis=0)
    g = g / (np.linalg.norm(g) or 1.0)
    report["gravity"] = {"axis": axis_name(g), "vector": [round(float(v), 3) for v in g], "still": still}
    return still


def analyse(heard: Listened, rate_hz: float | None = None, channels: tuple[str, ...] = (),
            units: tuple[str, ...] = (), gravity: np.ndarray | None = None) -> dict:  # fmt: skip
    """The report on what a device sent, checked against a model's rate, channels, units and gravity
    (any left out is not checked). Every number in it is finite or None (it is printed as JSON)."""
    report: dict = {"messages": heard.messages, "samples": 0, "checks": []}
    checks = report["checks"]
    if heard.dropped:
        report["dropped"] = dict(heard.dropped)
    batches = [b for b in heard.batches if len(b.timestamps)]
    if not batches:
        fix = "nothing usable arrived: is the device publishing to har/<device>/imu?"
        checks.append({"what": "samples", "ok": False, "found": "none", "expected": "samples", "fix": fix})
        _dropped_check(heard, report, checks)
        return report
    names = batches[0].channels
    t = np.concatenate([b.timestamps for b in batches])
    report["samples"] = len(t)
    rate = _timing(t, report)
    report["channels"] = sorted(heard.announced) if heard.announced else list(names)
    x = _values(np.concatenate([b.values for b in batches]), names, _limits(names, channels, units), report)
    guessed: dict[str, str] = {}
    still = None
    acc = [names.index(c) for c in ACC if c in names]
    if len(acc) == 3:
        still = _gravity(x[:, acc], rate, report, guessed)
    gyro = np.abs(x[:, [names.index(c) for c in GYRO if c in names]])
    if gyro.size and np.isfinite(gyro).any():
        guessed["gyro"] = "deg/s" if float(np.nanpercentile(gyro, 99)) > 15.0 else "rad/s"
    report["units"] = guessed
    if heard.units:
        report["announced_units"] = sorted(heard.units)
    _checks(report, rate, rate_hz, channels, units, gravity, still)
    _dropped_check(heard, report, checks)
    return report


def _dropped_check(heard: Listened, report: dict, checks: list[dict]) -> None:
    """Messages the live path would drop fail the check: the rest may look fine while most are lost."""
    if not heard.dropped:
        return
    n = sum(heard.dropped.values())
    why = ", ".join(f"{reason} {count}" for reason, count in heard.dropped.most_common())
    checks.append({"what": "messages", "ok": False, "found": f"{n} of {heard.messages} dropped ({why})",
                   "expected": "none dropped", "fix": "the live path drops these too: every message must "
                   "carry every channel the model reads, as numbers (README: Device protocol)"})  # fmt: skip


def _checks(report: dict, rate: float, rate_hz: float | None, channels: tuple[str, ...],
            units: tuple[str, ...], gravity: np.ndarray | None, still: bool | None) -> None:  # fmt: skip
    """What was measured, against the model: each check with the fix for a mismatch."""

    def check(what: str, ok: bool, found, expected, fix: str) -> None:
        report["checks"].append({"what": what, "ok": ok, "found": found, "expected": expected,
                                 "fix": "" if ok else fix})  # fmt: skip

    if rate_hz and not np.isfinite(rate):
        check("rate", False, None, rate_hz, "the timestamps do not move forward: each sample needs its own "
              "time (or send hz with t0, README: Device protocol)")  # fmt: skip
    elif rate_hz:
        ratio = rate / rate_hz
        resampled = RATE_RATIO[0] <= ratio <= RATE_RATIO[1]
        fix = (f"the device sends {rate:.1f} Hz, the model was trained at {rate_hz:g} Hz: "
               + (f"harstream resamples it, but set the device to {rate_hz:g} Hz (or train on its own "
                  f"recordings) for the best results" if resampled else
                  f"too far to resample (x{RATE_RATIO[0]:g}-x{RATE_RATIO[1]:g}): set the device to "
                  f"{rate_hz:g} Hz"))
        check("rate", abs(ratio - 1) <= 0.1, round(rate, 2), rate_hz, fix)
    present = report["channels"]
    if channels:
        missing = [c for c in channels if c not in present]
        check("channels", not missing, present, list(channels),
              f"missing {', '.join(missing)}: send them (see README, Device protocol) or train a model on "
              f"the channels the device has (harstream init-config)")  # fmt: skip
    lost = {c: n for c, n in report["lost"].items() if not channels or c in channels}
    if any(n > LOST_SHARE * report["samples"] for n in lost.values()):
        found = ", ".join(f"{c} {n} of {report['samples']}" for c, n in lost.items())
        check("readings", False, f"lost (null): {found}", "readings", "the device sends null for these: "
              "the live path skips those samples (a long run restarts the stream); is the sensor on?")
    beyond = report["beyond_range"]
    if beyond:
        top = {c: max(map(abs, report["ranges"][c])) for c in beyond}
        found = ", ".join(f"{c} {n} (up to {top[c]:g})" for c, n in beyond.items())
        check("values", False, f"beyond any wearable's range: {found}", "within range", "the live path drops "
              "samples holding these ('value out of range'): check the device's scaling and units")
    _unit_checks(report, channels, units, check)
    _orientation_check(report, gravity, still, check)
    if report["duplicates"] or report["gaps"]:
        check("timing", False, f"{report['duplicates']} repeated/backward, {report['gaps']} gaps", "none",
              "timestamps must increase by one sample period: repeated ones are dropped, and a silence of "
              f"more than {GAP_PERIODS:g} periods restarts the stream")  # fmt: skip


def _unit_checks(report: dict, channels: tuple[str, ...], units: tuple[str, ...], check) -> None:
    guessed = report["units"]
    want = dict(zip(channels, units, strict=False))
    for kind, prefix, factor in (("acc", "acc_", "9.81"), ("gyro", "gyro_", "57.3")):
        expected = next((u for c, u in want.items() if c.startswith(prefix)), None)
        if expected and kind in guessed:
            found = guessed[kind]
            if kind == "acc":
                fix = (f'acc looks like {found}: send "unit": "m/s2" or divide by {factor}' if found == "m/s2"
                       else f"acc looks like {found}, the model expects {expected}")
            else:
                fix = (f"gyro looks like {found}: send rad/s (divide by {factor})" if found == "deg/s"
                       else f"gyro looks like {found}, the model expects {expected}")
            check(f"{kind} units", found == expected, found, expected, fix)


def _orientation_check(report: dict, gravity: np.ndarray | None, still: bool | None, check) -> None:
    if gravity is None or "gravity" not in report:
        return
    g = np.asarray(report["gravity"]["vector"])
    angle = float(np.degrees(np.arccos(np.clip(g @ gravity, -1, 1))))
    report["gravity"]["angle_to_model_deg"] = round(angle, 1)
    fix = (f"gravity is on {axis_name(g)}, the model was trained with it on {axis_name(gravity)} "
           f"({angle:.0f} degrees apart): wear it in the model's pose (README: the pose the shipped "
           f"model expects), or train a model on your own recordings (README: Your own wearable)")
    if not still:
        fix += "; the wearer never held still, so this is a guess: check again standing still"
    check("orientation", angle <= ORIENTATION_DEG, axis_name(g), axis_name(gravity), fix)


class MqttListener(MqttSource):
    """An MQTT source that notes, into ``heard``, what ``device`` sends before the wire maps it."""

    def __init__(self, options: MqttOptions, channels: tuple[str, ...], device: str) -> None:
        super().__init__(options, channels)
        self.device = device
        self.heard = Listened()

    def handle(self, topic: str, payload: bytes, arrival: float | None = None) -> None:
        if self.options.topic.device_of(topic) != self.device:
            return
        self.heard.messages += 1
        peek(payload, self.heard)
        super().handle(topic, payload, arrival)


def listen_mqtt(source: MqttListener, seconds: float) -> Listened:
    """What the listener's device publishes during ``seconds`` (the source connected already)."""
    collect(source, source.heard, seconds)
    source.heard.dropped.update(source.drops.of(source.device))  # refused by the wire (a missing channel)
    return source.heard


def listen_serial(source, seconds: float) -> Listened:
    heard = Listened()
    collect(source, heard, seconds)
    heard.dropped.update(source.drops.of(source.device))  # lines the reader refused
    heard.messages = len(heard.batches) + sum(heard.dropped.values())
    return heard


def collect(source, heard: Listened, seconds: float) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(heard.batches.append, stop), daemon=True)
    thread.start()
    try:
        time.sleep(seconds)
    finally:
        stop.set()
        source.close()
        thread.join(2.0)


def peek(payload: bytes, heard: Listened) -> None:
    """Which channels (and unit) a message names, before the wire maps it to the model's."""
    if payload[:4] == b"HAR1" and len(payload) >= 6:
        heard.announced.update(ACC if payload[5] == 3 else ACC + GYRO)
        return
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(message, dict):
        return
    if isinstance(message.get("channels"), list):
        heard.announced.update(str(c) for c in message["channels"][:64])
    for key, names in (("acc", ACC), ("gyro", GYRO)):
        if key in message:
            heard.announced.update(names)
    if isinstance(message.get("unit"), str):
        heard.units.add(message["unit"][:16])


def render(report: dict, device: str, checkpoint: str):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    facts = Table.grid(padding=(0, 2))
    rate = report.get("rate_hz")
    facts.add_row("samples", f"{report['samples']} in {report['messages']} messages")
    if "ranges" in report:
        shown = "not measurable" if rate is None else f"{rate:g} Hz, jitter {report['jitter_ms']} ms"
        facts.add_row("rate", f"{shown}, {report['duplicates']} repeated/backward, {report['gaps']} gaps")
        facts.add_row("channels", ", ".join(report["channels"]))
        facts.add_row("ranges", "  ".join(f"{c} {r[0]:g}..{r[1]:g}" if r else f"{c} lost"
                                          for c, r in report["ranges"].items()))  # fmt: skip
        facts.add_row("units (guess)", ", ".join(f"{k} {v}" for k, v in report["units"].items()) or "-")
    if "gravity" in report:
        g = report["gravity"]
        facts.add_row("gravity", f"{g['axis']} {g['vector']}" + ("" if g["still"] else " (never still)"))
    checks = Table("check", "", "found", "model", "fix", box=None)
    for c in report["checks"]:
        mark = Text("ok", "green") if c["ok"] else Text("MISMATCH", "bold red")
        checks.add_row(c["what"], mark, str(c.get("found", "")), str(c.get("expected", "")), c["fix"])
    bad = sum(not c["ok"] for c in report["checks"])
    verdict = Text("everything matches the model" if not bad else f"{bad} mismatch(es): see the fixes",
                   "green" if not bad else "red")  # fmt: skip
    title = f"harstream check · {device} · {checkpoint}"
    return Panel(Group(facts, Text(""), checks, Text(""), verdict), title=title)
