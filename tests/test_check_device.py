"""`harstream check` says what a device really sends (issue 21): an all-null device is a report, not
"All-NaN slice encountered"; messages the live path drops fail the check; jitter does not move the
rate; values beyond any wearable's range are reported as such, never taken for a unit. The last
two run against a real mosquitto, through the command, as a user would."""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter

import numpy as np
from live_fixtures import Lines, harstream, mqtt_client

from model.data.signals import ACC, HAPT_CHANNELS
from model.strict_json import dumps
from streamer.core.types import SampleBatch
from streamer.tools.device_check import Listened, analyse

UNITS = ("g", "g", "g", "rad/s", "rad/s", "rad/s")
MINUS_Y = np.array([0.0, -1.0, 0.0])


def still(t: np.ndarray) -> np.ndarray:
    """A wearer standing still, gravity on -y (g, rad/s)."""
    x = np.random.default_rng(0).normal(0, 0.01, (len(t), 6))
    x[:, 1] -= 1.0
    return x


def heard(t: np.ndarray, x: np.ndarray, **kwargs) -> Listened:
    return Listened([SampleBatch("dev", t, x, HAPT_CHANNELS, 0.0)], messages=kwargs.pop("messages", 5),
                    announced=set(HAPT_CHANNELS), **kwargs)  # fmt: skip


def failed(report: dict) -> dict[str, dict]:
    return {c["what"]: c for c in report["checks"] if not c["ok"]}


def quietly(*args) -> dict:
    """analyse() with every warning an error (numpy's "All-NaN slice encountered" was one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return analyse(*args)


def test_a_50_hz_device_with_40_ms_jitter_is_measured_at_50_hz() -> None:
    t = 10.0 + np.arange(500) / 50 + np.random.default_rng(1).uniform(-0.04, 0.04, 500)
    report = quietly(heard(t, still(t)), 50.0, HAPT_CHANNELS, UNITS, MINUS_Y)
    assert abs(report["rate_hz"] - 50) < 1, report["rate_hz"]  # a median of the forward steps: 31.73
    assert "rate" not in failed(report)
    assert "timing" in failed(report)  # backward steps are real: the live path drops those samples


def test_an_all_null_device_is_reported_in_json_as_lost_readings() -> None:
    t = 10.0 + np.arange(250) / 50
    report = quietly(heard(t, np.full((250, 6), np.nan)), 50.0, HAPT_CHANNELS, UNITS, MINUS_Y)
    json.loads(dumps(report))  # what --json prints
    assert report["ranges"] == dict.fromkeys(HAPT_CHANNELS)
    assert "lost (null): acc_x 250 of 250" in failed(report)["readings"]["found"]
    assert report["units"] == {} and "gravity" not in report  # nothing to guess from


def test_accelerations_beyond_any_wearable_are_reported_not_taken_for_metres_per_second_squared() -> None:
    t = 10.0 + np.arange(250) / 50
    x = still(t)
    x[:, :3] = 1e30
    report = quietly(heard(t, x), 50.0, HAPT_CHANNELS, UNITS, MINUS_Y)
    fails = failed(report)
    assert "acc units" not in fails and "acc" not in report["units"]
    assert "beyond any wearable's range: acc_x 250 (up to 1e+30)" in fails["values"]["found"]
    assert "value out of range" in fails["values"]["fix"]


def test_messages_the_live_path_drops_fail_the_check() -> None:
    t = 10.0 + np.arange(50) / 50
    report = quietly(heard(t, still(t), messages=300, dropped=Counter({"missing channel gyro_x": 271})),
                     50.0, HAPT_CHANNELS, UNITS, MINUS_Y)  # fmt: skip
    assert failed(report)["messages"]["found"] == "271 of 300 dropped (missing channel gyro_x 271)"


def check_over_mqtt(broker, publish) -> tuple[int, dict, list[str]]:
    """`harstream check --json` on device wrist-01 while ``publish(client)`` sends; (exit, report, stderr)."""
    process = harstream("check", "--broker", broker.url, "--device", "wrist-01", "--seconds", "4", "--json")
    err = Lines(process.stderr)
    client = mqtt_client(broker.url)
    try:
        assert err.wait(lambda ls: any("connected" in x for x in ls), 30), err.lines
        publish(client)
        stdout, _ = process.communicate(timeout=30)
    finally:
        client.loop_stop()
        if process.poll() is None:
            process.kill()
    lines = err.wait(lambda ls: False, 0.5)
    assert not any("Traceback" in x or "All-NaN" in x for x in lines), lines
    return process.returncode, json.loads(stdout), lines


def batch(t0: float, channels: tuple[str, ...], values: np.ndarray | None = None) -> bytes:
    samples = np.zeros((10, len(channels))) if values is None else values
    return json.dumps({"t0": t0, "hz": 50, "channels": list(channels),
                       "samples": [[None if np.isnan(v) else v for v in row] for row in samples]}).encode()


def test_check_over_mqtt_fails_a_device_whose_later_messages_lack_gyro(broker) -> None:
    def publish(client) -> None:
        for k in range(30):  # 0.2 s each; after the first 5, acc alone
            channels = HAPT_CHANNELS if k < 5 else ACC
            client.publish("har/wrist-01/imu", batch(500.0 + 0.2 * k, channels), qos=1).wait_for_publish(5)

    code, report, _ = check_over_mqtt(broker, publish)
    assert code == 1 and report["messages"] == 30
    assert failed(report)["messages"]["found"] == "25 of 30 dropped (missing channel gyro_x 25)", report


def test_check_over_mqtt_reports_an_all_null_device_as_json(broker) -> None:
    def publish(client) -> None:
        for k in range(10):
            payload = batch(500.0 + 0.2 * k, HAPT_CHANNELS, np.full((10, 6), np.nan))
            client.publish("har/wrist-01/imu", payload, qos=1).wait_for_publish(5)
            time.sleep(0.02)

    code, report, _ = check_over_mqtt(broker, publish)
    assert code == 1 and report["samples"] == 100, report
    assert "lost (null)" in failed(report)["readings"]["found"]
