"""Wire formats: every payload a device may send, and every way one can be wrong."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from streamer.core.wire import (
    ACC,
    GYRO,
    HEADER,
    MAX_PAYLOAD_BYTES,
    STANDARD_GRAVITY,
    WireError,
    decode,
    encode_binary,
    encode_json_batch,
    valid_device_id,
)

CHANNELS = ACC + GYRO


def reason(payload: bytes, channels: tuple[str, ...] = CHANNELS) -> str:
    with pytest.raises(WireError) as caught:
        decode(payload, "dev", channels)
    return caught.value.reason


def test_single_sample_decodes_in_the_model_channel_order() -> None:
    batch = decode(b'{"t": 5.5, "acc": [1, 2, 3], "gyro": [4, 5, 6]}', "dev", ("gyro_z", "acc_x"), 7.0)
    assert batch.device == "dev" and batch.arrival == 7.0 and batch.rate_hz is None
    assert batch.timestamps.tolist() == [5.5]
    assert batch.values.tolist() == [[6.0, 1.0]]


def test_batch_times_samples_from_t0_and_hz() -> None:
    values = np.arange(12.0).reshape(2, 6)
    batch = decode(encode_json_batch(100.0, 50.0, CHANNELS, values), "dev", CHANNELS)
    assert batch.timestamps.tolist() == [100.0, 100.02]
    assert batch.rate_hz == 50.0
    assert np.array_equal(batch.values, values)


def test_batch_with_per_sample_times_and_reordered_channels() -> None:
    message = {"t0": 0, "hz": 50, "t": [1.0, 1.02, 1.04], "channels": list(reversed(CHANNELS)),
               "samples": [list(range(6))] * 3}  # fmt: skip
    batch = decode(json.dumps(message).encode(), "dev", CHANNELS)
    assert batch.timestamps.tolist() == [1.0, 1.02, 1.04]
    assert batch.values[0].tolist() == [5, 4, 3, 2, 1, 0]


def test_acceleration_in_metres_per_second_squared_is_converted_to_g() -> None:
    payload = json.dumps({"t": 0, "acc": [0, 0, STANDARD_GRAVITY], "gyro": [1, 1, 1], "unit": "m/s2"})
    batch = decode(payload.encode(), "dev", CHANNELS)
    assert batch.values.tolist() == [[0, 0, 1.0, 1, 1, 1]]  # gyroscope untouched


def test_binary_frame_round_trips_in_float32() -> None:
    values = np.random.default_rng(0).normal(size=(25, 6))
    frame = encode_binary(1732790000.0, 50.0, values)
    assert len(frame) == HEADER.size + 25 * 6 * 4
    batch = decode(frame, "dev", CHANNELS)
    assert np.allclose(batch.values, values, atol=1e-6)
    assert batch.timestamps[0] == 1732790000.0 and batch.rate_hz == 50.0
    assert np.allclose(np.diff(batch.timestamps), 0.02, atol=1e-6)  # float64 at 1.7e9 s


def test_binary_frame_with_accelerometer_only_lacks_gyro() -> None:
    frame = encode_binary(0.0, 50.0, np.zeros((4, 3)))
    assert decode(frame, "dev", ACC).values.shape == (4, 3)
    assert reason(frame) == "missing channel gyro_x"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"t": 1, "acc": [1, 2', "malformed JSON"),
        (b'{"t": 1, "acc": [1, 2], "gyro": [1, 2, 3]}', "wrong channel count"),
        (b'{"t0": 0, "hz": 50, "channels": ["acc_x"], "samples": [[1, 2, 3]]}', "wrong channel count"),
        (b'{"t": 1, "acc": [1, 2, 3]}', "missing channel gyro_x"),
        (b'{"t": 1, "acc": ["1", 2, 3], "gyro": [1, 2, 3]}', "a value is not a number"),
        (b'{"t": "now", "acc": [1, 2, 3], "gyro": [1, 2, 3]}', "t must be a number"),
        (b'{"t0": 0, "channels": ["acc_x"], "samples": [[1]]}', "a batch needs hz or t"),
        (b'{"t0": 0, "hz": -5, "channels": ["acc_x"], "samples": [[1]]}', "hz out of range"),
        (b'{"t": 1, "acc": [1, 2, 3], "gyro": [1, 2, 3], "unit": "furlong"}', "unknown unit"),
        (b'{"hello": "world"}', "unknown format"),
        (b"[1, 2, 3]", "unknown format"),
        (b"acc=1,2,3", "unknown format"),
        (b'{"t": 1, "acc": [1, 2, 3], "gyro": [1, 2, 3], "note": "\xff\xfe"}', "not UTF-8"),
        (b"HAR1\x01\x06", "binary frame too short"),
        (HEADER.pack(b"HAR1", 1, 5, 1, 50.0, 0.0) + bytes(20), "wrong channel count"),
        (HEADER.pack(b"HAR1", 2, 6, 1, 50.0, 0.0) + bytes(24), "unknown binary version"),
        (HEADER.pack(b"HAR1", 1, 6, 2, 50.0, 0.0) + bytes(4), "frame length does not match header"),
        (HEADER.pack(b"HAR1", 1, 6, 1, float("nan"), 0.0) + bytes(24), "hz out of range"),
    ],
)
def test_bad_payloads_raise_wire_error_with_a_short_reason(payload: bytes, expected: str) -> None:
    assert reason(payload) == expected


def test_oversize_payload_is_refused_before_parsing() -> None:
    assert reason(b"{" + b" " * MAX_PAYLOAD_BYTES + b"}") == "payload over 1 MB"


def test_timestamps_twice_the_announced_rate_are_refused() -> None:
    message = {"hz": 50, "t": [i / 100 for i in range(10)], "channels": list(CHANNELS),
               "samples": [[0.0] * 6] * 10}  # fmt: skip
    assert reason(json.dumps(message).encode()) == "timestamps disagree with hz"


def test_non_finite_values_pass_through_for_the_scheduler_to_count() -> None:
    # NaN and Infinity are what Python's json writes; per-sample dropping is the scheduler's job
    batch = decode(b'{"t": 1, "acc": [NaN, Infinity, -Infinity], "gyro": [0, 0, 0]}', "dev", CHANNELS)
    assert np.isnan(batch.values[0, 0]) and np.isinf(batch.values[0, 1:3]).all()


def test_device_ids_are_validated_before_they_name_anything() -> None:
    assert valid_device_id("wrist_01.left-2")
    for bad in ("", "..", "a/b", "a b", "x" * 65, "dev\x00", "ünï", "+", "#"):
        assert not valid_device_id(bad), bad


def test_header_layout_is_twenty_bytes_little_endian() -> None:
    frame = encode_binary(2.0, 25.0, np.zeros((1, 6)))
    assert frame[:4] == b"HAR1" and frame[4] == 1 and frame[5] == 6
    assert struct.unpack_from("<H", frame, 6) == (1,)
    assert struct.unpack_from("<f", frame, 8) == (25.0,) and struct.unpack_from("<d", frame, 12) == (2.0,)
