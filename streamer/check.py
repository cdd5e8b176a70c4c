"""``harstream check``: listen to one wearable for a few seconds and say whether the model fits it.

What it measures (:func:`analyse`, a pure function of the batches): the rate and the jitter of the
device's timestamps, gaps and repeated or backward times, the channels present, each channel's
range, a guess of the units (acceleration whose magnitude sits near 1 while still is in g, near 9.8
in m/s²; angular rate past 15 is in deg/s, rad/s otherwise) and the direction of gravity during the
stillest second. Against a checkpoint (its rate, channels and units, and the gravity direction of its
training data) each is a check with the fix for a mismatch.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.recordings import ACC, GYRO
from streamer.limits import GAP_PERIODS, RATE_RATIO
from streamer.types import SampleBatch

STILL_G = 0.05  # the acceleration magnitude's std (g) over a second below which the wearer is still
ORIENTATION_DEG = 45.0  # gravity further than this from the model's is a different pose
AXES = ("x", "y", "z")


@dataclass
class Listened:
    """What one device sent during the check."""

    batches: list[SampleBatch] = field(default_factory=list)
    messages: int = 0
    announced: set[str] = field(default_factory=set)  # channel names its messages carry
    units: set[str] = field(default_factory=set)  # "unit" values its JSON announces


def axis_name(vector: np.ndarray) -> str:
    i = int(np.argmax(np.abs(vector)))
    return ("+" if vector[i] >= 0 else "-") + AXES[i]


def model_gravity(meta) -> np.ndarray | None:
    """Where gravity pointed in the checkpoint's training data (a unit vector), or None if unknown.

    HAPT and UCI HAR were recorded with a phone upright at the waist: +x. For a model trained on
    your own recordings, the mean acceleration direction over their labelled samples."""
    config = meta.config or {}
    data = config.get("data", {})
    if data.get("dataset") in ("hapt", "uci_har", "uci-har"):
        return np.array([1.0, 0.0, 0.0])
    if data.get("dataset") == "csv" and Path(str(data.get("path", ""))).is_dir():
        from model.recordings import read_csv_folder

        try:
            classes = tuple(data.get("classes", ()))
            recordings = read_csv_folder(Path(data["path"]), ACC, classes, meta.rate_hz)
        except (OSError, ValueError):
            return None
        acc = np.concatenate([r.values[r.labels >= 0] for r in recordings])
        if len(acc):
            mean = acc.mean(axis=0)
            return mean / (np.linalg.norm(mean) or 1.0)
    return None


def analyse(heard: Listened, rate_hz: float | None = None, channels: tuple[str, ...] = (),
            units: tuple[str, ...] = (), gravity: np.ndarray | None = None) -> dict:  # fmt: skip
    """The report on what a device sent, checked against a model's rate, channels, units and gravity
    (any left out is not checked)."""
    report: dict = {"messages": heard.messages, "samples": 0, "checks": []}
    checks = report["checks"]
    batches = [b for b in heard.batches if len(b.timestamps)]
    if not batches:
        fix = "nothing usable arrived: is the device publishing to har/<device>/imu?"
        checks.append({"what": "samples", "ok": False, "found": "none", "fix": fix})
        return report
    names = batches[0].channels
    t = np.concatenate([b.timestamps for b in batches])
    x = np.concatenate([b.values for b in batches])
    report["samples"] = len(t)
    dt = np.diff(t)
    forward = dt[dt > 0]
    period = float(np.median(forward)) if len(forward) else float("nan")
    rate = 1.0 / period if len(forward) else float("nan")
    report["rate_hz"] = round(rate, 2)
    report["jitter_ms"] = round(float(np.std(forward)) * 1000, 2) if len(forward) else None
    report["duplicates"] = int(np.sum(dt <= 0))
    report["gaps"] = int(np.sum(dt > GAP_PERIODS * period)) if len(forward) else 0
    present = sorted(heard.announced) if heard.announced else list(names)
    report["channels"] = present
    report["ranges"] = {c: [round(float(np.nanmin(x[:, i])), 4), round(float(np.nanmax(x[:, i])), 4)]
                        for i, c in enumerate(names)}  # fmt: skip
    acc = [names.index(c) for c in ACC if c in names]
    gyro = [names.index(c) for c in GYRO if c in names]
    guessed: dict[str, str] = {}
    still = None
    if len(acc) == 3 and len(t) >= 4:
        a = x[:, acc]
        norm = np.linalg.norm(a, axis=1)
        second = max(2, round(rate)) if np.isfinite(rate) else 2
        scale = 9.80665 if float(np.nanmedian(norm)) > 4.0 else 1.0
        guessed["acc"] = "m/s2" if scale > 1 else "g"
        if len(norm) >= second:
            spread = np.lib.stride_tricks.sliding_window_view(norm / scale, second).std(axis=1)
            start = int(np.nanargmin(spread))
            still = float(spread[start]) < STILL_G
            g = a[start : start + second].mean(axis=0)
            g = g / (np.linalg.norm(g) or 1.0)
            vector = [round(float(v), 3) for v in g]
            report["gravity"] = {"axis": axis_name(g), "vector": vector, "still": still}
    if gyro:
        p99 = float(np.nanpercentile(np.abs(x[:, gyro]), 99))
        guessed["gyro"] = "deg/s" if p99 > 15.0 else "rad/s"
    report["units"] = guessed
    if heard.units:
        report["announced_units"] = sorted(heard.units)

    # -- against the model ----------------------------------------------------------------------
    def check(what: str, ok: bool, found, expected, fix: str) -> None:
        checks.append({"what": what, "ok": ok, "found": found, "expected": expected,
                       "fix": "" if ok else fix})  # fmt: skip

    if rate_hz:
        ratio = rate / rate_hz
        resampled = RATE_RATIO[0] <= ratio <= RATE_RATIO[1]
        fix = (f"the device sends {rate:.1f} Hz, the model was trained at {rate_hz:g} Hz: "
               + (f"harstream resamples it, but set the device to {rate_hz:g} Hz (or train on its own "
                  f"recordings) for the best results" if resampled else
                  f"too far to resample (x{RATE_RATIO[0]:g}-x{RATE_RATIO[1]:g}): set the device to "
                  f"{rate_hz:g} Hz"))
        check("rate", abs(ratio - 1) <= 0.1, round(rate, 2), rate_hz, fix)
    if channels:
        missing = [c for c in channels if c not in present]
        check("channels", not missing, present, list(channels),
              f"missing {', '.join(missing)}: send them (see README, Device protocol) or train a model on "
              f"the channels the device has (harstream init-config)")  # fmt: skip
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
    if gravity is not None and "gravity" in report:
        g = np.asarray(report["gravity"]["vector"])
        angle = float(np.degrees(np.arccos(np.clip(g @ gravity, -1, 1))))
        report["gravity"]["angle_to_model_deg"] = round(angle, 1)
        ok = angle <= ORIENTATION_DEG
        fix = (f"gravity is on {axis_name(g)}, the model was trained with it on {axis_name(gravity)} "
               f"({angle:.0f} degrees apart): wear it in the model's pose (README: the pose the shipped "
               f"model expects), or train a model on your own recordings (README: Your own wearable)")
        if not still:
            fix += "; the wearer never held still, so this is a guess: check again standing still"
        check("orientation", ok, axis_name(g), axis_name(gravity), fix)
    if report["duplicates"] or report["gaps"]:
        check("timing", False, f"{report['duplicates']} repeated/backward, {report['gaps']} gaps", "none",
              "timestamps must increase by one sample period: repeated ones are dropped, and a silence of "
              f"more than {GAP_PERIODS:g} periods restarts the stream")  # fmt: skip
    return report


def listen_mqtt(options, device: str, channels: tuple[str, ...], seconds: float,
                connect_timeout: float) -> Listened:  # fmt: skip
    """What ``device`` publishes during ``seconds`` (after connecting)."""
    from streamer.mqtt import MqttSource
    from streamer.wearables_cli import start_mqtt

    heard = Listened()

    class Listener(MqttSource):
        def handle(self, topic: str, payload: bytes, arrival: float | None = None) -> None:
            if self.options.topic.device_of(topic) != device:
                return
            heard.messages += 1
            peek(payload, heard)
            super().handle(topic, payload, arrival)

    source = start_mqtt(options, channels, connect_timeout=connect_timeout, headless=True,
                        source=Listener(options, channels))  # fmt: skip
    collect(source, heard, seconds)
    return heard


def listen_serial(source, seconds: float) -> Listened:
    heard = Listened()
    collect(source, heard, seconds)
    heard.messages = len(heard.batches)
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
    if rate is not None:
        facts.add_row("rate", f"{rate:g} Hz, jitter {report['jitter_ms']} ms, "
                      f"{report['duplicates']} repeated/backward, {report['gaps']} gaps")  # fmt: skip
        facts.add_row("channels", ", ".join(report["channels"]))
        facts.add_row("ranges", "  ".join(f"{c} {lo:g}..{hi:g}" for c, (lo, hi) in report["ranges"].items()))
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
