"""Wire formats: what a wearable sends, decoded into a :class:`SampleBatch`. Pure functions, no I/O.

Three payloads share one topic; the first byte tells them apart.

1. One sample, JSON: ``{"t": 1732790000.02, "acc": [ax, ay, az], "gyro": [gx, gy, gz]}``
2. A batch, JSON: ``{"t0": 1732790000.0, "hz": 50, "channels": ["acc_x", ...], "samples": [[...], ...]}``
   with an optional ``"t": [...]`` of per-sample timestamps (seconds, the same clock as ``t0``).
3. A binary frame (little-endian), for small devices::

       offset size  field
       0      4     magic b"HAR1"
       4      1     version (1)
       5      1     channel count: 3 (acc_x, acc_y, acc_z) or 6 (+ gyro_x, gyro_y, gyro_z)
       6      2     sample count (uint16)
       8      4     rate in Hz (float32)
       12     8     t0, the first sample's time in seconds (float64)
       20     4·n·c samples, float32, row-major (sample by sample)

Accelerations are in g (JSON may say ``"unit": "m/s2"``; they are divided by 9.80665), angular
rates in rad/s. A reading the device lost is ``null`` in JSON (``NaN`` is accepted too, though it is
not JSON) and NaN in a binary frame. The bounds (sizes, rates, times) are :mod:`streamer.core.limits`.
Decoding never raises anything but :class:`WireError`, whose ``reason`` is short and stable: it
is the key under which the pipeline counts the device's bad input.

>>> batch = decode(b'{"t": 1.0, "acc": [0, 0, 1], "gyro": [0, 0, 0]}', "watch", ("acc_z", "gyro_x"))
>>> batch.channels, batch.values.tolist()
(('acc_z', 'gyro_x'), [[1.0, 0.0]])
>>> decode(b'{"t": 1.0, "acc": [0, 0]}', "watch", ("acc_x",))
Traceback (most recent call last):
...
streamer.core.wire.WireError: wrong channel count
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
import time

import numpy as np

from model.data.signals import ACC, GYRO
from model.strict_json import dumps
from streamer.core.limits import MAX_ABS_TIME_S, MAX_PAYLOAD_BYTES, MAX_SAMPLES_PER_MESSAGE, WIRE_RATE_HZ
from streamer.core.types import SampleBatch

STANDARD_GRAVITY = 9.80665  # m/s² per g
DEVICE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # safe in a topic, a file name and a terminal

MAGIC = b"HAR1"
BINARY_VERSION = 1
HEADER = struct.Struct("<4sBBHfd")  # magic, version, channels, samples, rate, t0: 20 bytes
BINARY_CHANNELS = {3: ACC, 6: ACC + GYRO}


class WireError(ValueError):
    """A payload that cannot be used; ``reason`` is the per-device counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def valid_device_id(device: str) -> bool:
    """Whether ``device`` may name a device (and so a topic, a file, a dashboard row).

    >>> valid_device_id("wrist-01"), valid_device_id("../etc"), valid_device_id("a b")
    (True, False, False)
    """
    return DEVICE_ID.fullmatch(device) is not None and device not in (".", "..")


def decode(
    payload: bytes, device: str, channels: tuple[str, ...], arrival: float | None = None
) -> SampleBatch:
    """One message of ``device`` as a batch holding ``channels`` (in that order)."""
    arrival = time.monotonic() if arrival is None else arrival
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("payload over 1 MB")
    try:
        if payload.startswith(MAGIC):
            t, values, names, rate = _binary(payload)
        elif payload.lstrip()[:1] == b"{":
            t, values, names, rate = _json(payload)
        else:
            raise WireError("unknown format")
    except WireError:
        raise
    except Exception as error:  # a case the checks below missed: still the device's bad input
        raise WireError(f"undecodable ({type(error).__name__})") from None
    missing = [c for c in channels if c not in names]
    if missing:
        raise WireError(f"missing channel {missing[0]}")
    index = [names.index(c) for c in channels]
    return SampleBatch(device, t, values[:, index], channels, arrival, rate_hz=rate)


def encode_binary(t0: float, rate_hz: float, values: np.ndarray) -> bytes:
    """A binary frame of ``values`` (n, 3 or 6) in :data:`BINARY_CHANNELS` order.

    >>> frame = encode_binary(10.0, 50.0, np.ones((2, 6)))
    >>> len(frame), decode(frame, "d", ("acc_x",)).timestamps.tolist()
    (68, [10.0, 10.02])
    """
    n, c = values.shape
    assert c in BINARY_CHANNELS, f"a binary frame carries 3 or 6 channels, not {c}"
    head = HEADER.pack(MAGIC, BINARY_VERSION, c, n, rate_hz, t0)
    return head + np.ascontiguousarray(values, dtype="<f4").tobytes()


def encode_json_batch(t0: float, rate_hz: float, channels: tuple[str, ...], values: np.ndarray) -> bytes:
    samples = [[float(x) for x in row] for row in values]
    return dumps({"t0": t0, "hz": rate_hz, "channels": list(channels), "samples": samples}).encode()


def encode_json_sample(t: float, acc: np.ndarray, gyro: np.ndarray) -> bytes:
    return dumps({"t": t, "acc": [float(x) for x in acc], "gyro": [float(x) for x in gyro]}).encode()


# -- decoders ------------------------------------------------------------------------------------
Decoded = tuple[np.ndarray, np.ndarray, tuple[str, ...], float | None]


def _binary(payload: bytes) -> Decoded:
    if len(payload) < HEADER.size:
        raise WireError("binary frame too short")
    _, version, c, n, rate, t0 = HEADER.unpack_from(payload)
    if version != BINARY_VERSION:
        raise WireError("unknown binary version")
    if c not in BINARY_CHANNELS:
        raise WireError("wrong channel count")
    if n > MAX_SAMPLES_PER_MESSAGE:
        raise WireError("too many samples")
    if len(payload) != HEADER.size + 4 * n * c:
        raise WireError("frame length does not match header")
    rate = _rate(rate)
    _time(t0, "t0")
    values = np.frombuffer(payload, dtype="<f4", offset=HEADER.size).reshape(n, c).astype(np.float64)
    return t0 + np.arange(n) / rate, values, BINARY_CHANNELS[c], rate


def _constant(name: str) -> float:
    # NaN and Infinity are not JSON; Python would accept them. A device that sends them has lost
    # a sensor reading, which the scheduler counts per sample, so let them through as floats.
    return float(name.replace("Infinity", "inf"))


def _json(payload: bytes) -> Decoded:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("not UTF-8") from None
    try:
        message = json.loads(text, parse_constant=_constant)
    except (ValueError, RecursionError):
        raise WireError("malformed JSON") from None
    if not isinstance(message, dict):
        raise WireError("not a JSON object")
    if "samples" in message:
        t, values, names, rate = _json_batch(message)
    elif "acc" in message:
        t, values, names, rate = _json_sample(message)
    else:
        raise WireError("unknown format")
    unit = message.get("unit", "g")
    if unit in ("m/s2", "m/s^2", "m/s²"):
        acc = [i for i, name in enumerate(names) if name.startswith("acc")]
        values[:, acc] /= STANDARD_GRAVITY
    elif unit != "g":
        raise WireError("unknown unit")
    return t, values, names, rate


def _json_sample(message: dict) -> Decoded:
    acc, gyro = message.get("acc"), message.get("gyro", [])
    if not isinstance(acc, list) or not isinstance(gyro, list):
        raise WireError("acc and gyro must be lists")
    if len(acc) != 3 or len(gyro) not in (0, 3):
        raise WireError("wrong channel count")
    t = _time(message.get("t"), "t")
    rate = _rate(message["hz"]) if "hz" in message else None
    values = _matrix([acc + gyro], 3 + len(gyro))
    return np.array([t]), values, ACC + GYRO[: len(gyro)], rate


def _json_batch(message: dict) -> Decoded:
    names, samples = message.get("channels"), message["samples"]
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names) or not names:
        raise WireError("channels must be a list of names")
    if len(set(names)) != len(names):
        raise WireError("a channel is named twice")
    if not isinstance(samples, list):
        raise WireError("samples must be a list")
    if len(samples) > MAX_SAMPLES_PER_MESSAGE:
        raise WireError("too many samples")
    values = _matrix(samples, len(names))
    n = len(values)
    rate = _rate(message["hz"]) if "hz" in message else None
    if "t" in message:
        stamps = message["t"]
        if not isinstance(stamps, list) or len(stamps) != n:
            raise WireError("t must list one time per sample")
        t = np.array([_time(x, "t") for x in stamps], dtype=np.float64)
        if rate is not None and n > 2:
            # a device whose clock disagrees with the rate it announces (e.g. sends twice as fast)
            measured = (n - 1) / (t[-1] - t[0]) if t[-1] > t[0] else math.inf
            if abs(measured / rate - 1.0) > 0.1:
                raise WireError("timestamps disagree with hz")
    elif rate is not None:
        t = _time(message.get("t0"), "t0") + np.arange(n) / rate
    else:
        raise WireError("a batch needs hz or t")
    return t, values, tuple(names), rate


def _number(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise WireError(f"{name} must be a number")
    try:
        return float(x)
    except OverflowError:  # an integer of hundreds of digits
        raise WireError(f"{name} out of range") from None


def _time(x: object, name: str) -> float:
    """A timestamp: NaN passes (the scheduler counts it per sample), an absurd one does not."""
    t = _number(x, name)
    if abs(t) > MAX_ABS_TIME_S:
        raise WireError(f"{name} out of range")
    return t


def _rate(x: object) -> float:
    rate = _number(x, "hz")
    if not (WIRE_RATE_HZ[0] <= rate <= WIRE_RATE_HZ[1]):  # also refuses NaN
        raise WireError("hz out of range")
    return rate


def _matrix(rows: list, width: int) -> np.ndarray:
    # Type checks as set(map(type, ...)): the loops run in C, not once per value in Python (a
    # 50-sample batch decoded in about half the time). json.loads makes only exact types, so
    # ``type(x)`` is int, float, bool, str, None, list or dict, and bool is never int here.
    if rows and (set(map(type, rows)) != {list} or set(map(len, rows)) != {width}):
        raise WireError("wrong channel count")
    if not set(map(type, itertools.chain.from_iterable(rows))) <= {int, float, type(None)}:
        raise WireError("a value is not a number")  # numpy would read "1.5" and True as numbers
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), width)  # null -> NaN
    except OverflowError:  # an integer of hundreds of digits; 1e999 is already inf
        raise WireError("a value out of range") from None
