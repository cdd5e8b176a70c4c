"""``harstream soak``: hours of traffic, good and hostile devices mixed, in minutes.

Every simulated second, each good device sends one second of a real held-out HAPT recording as a
JSON batch or a binary frame; each hostile device sends something from :data:`ATTACKS` (absurd or
non-finite values, clocks that jump, rates that lie, huge numbers, garbage, oversized messages);
and now and then a flood of new device ids arrives at the device limit. Every payload goes through
the real decoder, scheduler, engine and decider, on a simulated clock (so an hour of traffic with
its evictions and admissions takes as long as its inference does), and every prediction is written
as strict JSON. The figures: the longest a good device went without a prediction (in its own
time), resident memory over the run, and every drop by reason.

What needs real services and wall-clock time (hostile routing keys on a RabbitMQ fleet, a frozen
PostgreSQL server, a deleted store file) is ``--faults``: :mod:`streamer.tools.soak_faults`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.data.recordings import UCI_HAR_TEST_SUBJECTS, load_hapt
from model.net.checkpoint_meta import CheckpointMeta
from model.strict_json import dumps
from streamer.core.engine import Decider, InferenceEngine
from streamer.core.scheduler import Scheduler
from streamer.core.wire import ACC, GYRO, WireError, decode, encode_binary, encode_json_batch

CHANNELS = ACC + GYRO


@dataclass
class Device:
    name: str
    values: np.ndarray  # (T, 6) a real recording, looped
    clock: float = 1_700_000_000.0  # the device's own clock, Unix seconds
    cursor: int = 0

    def next_second(self, rate: float) -> tuple[float, np.ndarray]:
        n = int(rate)
        rows = np.arange(self.cursor, self.cursor + n) % len(self.values)
        self.cursor += n
        t0, self.clock = self.clock, self.clock + n / rate
        return t0, self.values[rows]


def _json(t0: float, hz: float, values: np.ndarray) -> bytes:
    return encode_json_batch(t0, hz, CHANNELS, values)


# Each attack: (device, rate, rng) -> payloads. The device keeps its own clock, as a real one would.
def _absurd(d, rate, rng):
    t0, v = d.next_second(rate)
    v = v.copy()
    v[rng.integers(len(v), size=3)] = 1e308  # finite, beyond any sensor
    return [_json(t0, rate, v)]


def _non_finite(d, rate, rng):
    t0, v = d.next_second(rate)
    return [_json(t0, rate, np.where(rng.random(v.shape) < 0.05, np.nan, v))]


def _future(d, rate, rng):
    t0, v = d.next_second(rate)
    return [_json(t0 + 1e9, rate, v[:1]), _json(t0, rate, v)]  # one spoofed message, then the truth


def _reboot(d, rate, rng):
    d.clock = float(rng.uniform(0, 3))  # the clock restarts near 0
    t0, v = d.next_second(rate)
    return [_json(t0, rate, v)]


def _lying_rate(d, rate, rng):
    t0, v = d.next_second(rate)
    hz = float(rng.choice([1.0, 2.0, 1000.0]))
    return [_json(t0, hz, v)]  # the samples claim 1 Hz: 50 s of data in one second


def _repeat(d, rate, rng):
    t0, v = d.next_second(rate)
    return [_json(t0, rate, v), _json(t0, rate, v)]  # QoS 1 redelivery


def _huge_numbers(d, rate, rng):
    d.next_second(rate)
    return [b'{"t": ' + b"9" * 400 + b', "acc": [0, 0, 1], "gyro": [0, 0, 0]}']


def _garbage(d, rate, rng):
    d.next_second(rate)
    return [rng.bytes(int(rng.integers(1, 512))), b'{"t0": 0, "hz": 50, "samples": [[1, 2]', b"HAR1\x01"]


def _oversized(d, rate, rng):
    d.next_second(rate)
    return [b"{" + b" " * (1 << 20) + b"}", encode_binary(d.clock, rate, np.zeros((10_001, 6), np.float32))]


def _good_binary(d, rate, rng):  # hostile devices are sometimes well-behaved: they must recover
    t0, v = d.next_second(rate)
    return [encode_binary(t0, rate, v.astype(np.float32))]


ATTACKS: dict[str, Callable] = {
    "absurd values": _absurd, "non-finite values": _non_finite, "message from the future": _future,
    "clock restart": _reboot, "lying rate": _lying_rate, "repeated message": _repeat,
    "huge numbers": _huge_numbers, "garbage": _garbage, "oversized": _oversized, "behaves": _good_binary,
}  # fmt: skip


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def one_second(now: int, goods: list[Device], bads: list[Device], flood: int, rate: float,
               rng: np.random.Generator, attacks: Counter) -> list[tuple[str, bytes]]:  # fmt: skip
    """Second ``now`` of traffic: each good device's samples (JSON and binary in turn), each hostile
    device's attack of the second (counted in ``attacks``), and ``flood`` new device ids."""
    payloads: list[tuple[str, bytes]] = []
    for d in goods:
        t0, v = d.next_second(rate)
        payload = _json(t0, rate, v) if now % 2 else encode_binary(t0, rate, v.astype(np.float32))
        payloads.append((d.name, payload))
    for d in bads:
        name = str(rng.choice(list(ATTACKS)))
        attacks[name] += 1
        payloads += [(d.name, p) for p in ATTACKS[name](d, rate, rng)]
    if flood:  # new ids, once each
        burst = _json(float(now), rate, bads[0].values[:50])
        payloads += [(f"flood-{now}-{k}", burst) for k in range(flood)]
    return payloads


def run_soak(checkpoint: CheckpointMeta, engine: InferenceEngine, hours: float = 1.0, good: int = 10,
             hostile: int = 10, flood_every_s: float = 600.0, flood: int = 300, hop: int = 64,
             seed: int = 0, progress: Callable[[float], None] | None = None) -> dict:  # fmt: skip
    rng = np.random.default_rng(seed)
    rate = checkpoint.rate_hz
    recordings = load_hapt(UCI_HAR_TEST_SUBJECTS)  # held out from training
    values = [r.select(CHANNELS).values for r in recordings]
    goods = [Device(f"good-{k:02d}", values[k % len(values)]) for k in range(good)]
    bads = [Device(f"hostile-{k:02d}", values[(k + 3) % len(values)]) for k in range(hostile)]
    max_devices = good + hostile + flood // 2  # a flood fills the table: newcomers wait for slots
    units = tuple(checkpoint.get("input_units", ()))
    scheduler = Scheduler(checkpoint.preprocessing, checkpoint.window, hop, rate, max_devices=max_devices,
                          idle_timeout_s=300.0, units=units)  # fmt: skip
    decider = Decider(checkpoint.classes)
    decider.bind(scheduler.drops)  # one ledger: the scheduler's drops and the decider's
    wire_errors: Counter = Counter()
    attacks: Counter = Counter()
    last_prediction: dict[str, float] = {}
    longest_silence = 0.0
    predictions = messages = payload_bytes = 0
    rss = [resident_mib()]
    started = time.monotonic()
    seconds = int(hours * 3600)
    for now in range(1, seconds + 1):  # the simulated clock, one step a second
        flooding = bool(flood_every_s) and now % flood_every_s == 0
        payloads = one_second(now, goods, bads, flood if flooding else 0, rate, rng, attacks)
        windows = []
        for device, payload in payloads:
            messages += 1
            payload_bytes += len(payload)
            try:
                batch = decode(payload, device, checkpoint.input_channels, arrival=float(now))
            except WireError as error:
                wire_errors[error.reason] += 1
                continue
            windows += scheduler.push(batch)
        for device in scheduler.evict_idle(float(now)):
            decider.forget(device)
        if windows:
            for prediction in decider.decide(windows, engine.probabilities(windows)):
                json.loads(dumps(prediction.to_json()))  # strict JSON, or this raises
                predictions += 1
                previous = last_prediction.get(prediction.device)
                if previous is not None and prediction.device.startswith("good"):
                    longest_silence = max(longest_silence, prediction.t - previous)
                last_prediction[prediction.device] = prediction.t
        if now % 300 == 0:
            rss.append(resident_mib())
            if progress:
                progress(now / seconds)
    totals = scheduler.totals()
    good_windows = sum(s.counters.windows for d, s in scheduler.devices.items() if d.startswith("good"))
    return {
        "hours": hours,
        "good_devices": good,
        "hostile_devices": hostile,
        "flood_ids": flood * (seconds // int(flood_every_s)) if flood_every_s else 0,
        "messages": messages,
        "megabytes_received": round(payload_bytes / 1e6, 1),
        "predictions": predictions,
        "good_device_windows": good_windows,
        "good_device_windows_expected": good * ((seconds * int(rate) - checkpoint.window) // hop + 1),
        "longest_good_silence_s": round(longest_silence, 3),
        "hop_s": hop / rate,
        "dropped_by_reason": dict(totals.dropped),
        "wire_errors": dict(wire_errors),
        "clock_jumps": totals.clock_jumps,
        "gaps": totals.gaps,
        "devices_forgotten": scheduler.evicted_devices,
        "attacks": dict(attacks),
        "rss_mib": [round(r, 1) for r in rss],
        "rss_growth_mib_after_first_interval": round(rss[-1] - rss[1], 1) if len(rss) > 2 else None,
        "wall_s": round(time.monotonic() - started, 1),
    }
