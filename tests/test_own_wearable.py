"""Your own wearable, end to end, through a real mosquitto: a labelled recording, `init-config`,
`train.py`, then `harstream mqtt` recognises the new wearable; `check` flags what does not fit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest
from live_fixtures import ROOT, Lines, harstream, mqtt_client

from model.data.signals import HAPT_CHANNELS
from model.train.experiment import load_config
from model.train.init_config import write_config
from streamer.core.types import SampleBatch
from streamer.tools.device_check import Listened, analyse

CLASSES = ("UPRIGHT", "SHAKING")


def motion(kind: str, t: np.ndarray, seed: int = 0, acc_scale: float = 1.0) -> np.ndarray:
    """Two clearly separable activities: still with gravity on -y (the README's own example), and
    shaking at 3 Hz with gravity on +z."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.02, (len(t), 6))
    if kind == "UPRIGHT":
        x[:, 1] -= 1.0
    else:
        x[:, 2] += 1.0
        x[:, 0] += 0.6 * np.sin(2 * np.pi * 3 * t)
        x[:, 5] += 2.0 * np.sin(2 * np.pi * 3 * t)
    x[:, :3] *= acc_scale
    return x


def message(t: np.ndarray, x: np.ndarray) -> bytes:
    return json.dumps({"t0": float(t[0]), "hz": 50, "channels": list(HAPT_CHANNELS),
                       "samples": np.round(x, 5).tolist()}).encode()  # fmt: skip


def test_record_labelled_init_config_train_and_recognise_the_new_wearable(broker, tmp_path) -> None:
    rec = tmp_path / "recordings"
    process = harstream("record", "--broker", broker.url, "--out", str(rec), "--headless",
                        "--classes", ",".join(CLASSES))  # fmt: skip
    err = Lines(process.stderr)
    assert err.wait(lambda ls: any("recording" in x for x in ls), 30), err.lines
    client = mqtt_client(broker.url)
    try:
        for seed, device in enumerate(("band-1", "band-2")):  # two wearers: one trains, one tests
            t = 100.0
            for kind in (*CLASSES, *CLASSES):
                client.publish(f"har/{device}/label", kind, qos=1).wait_for_publish(5)
                for _ in range(15):  # 15 s, a second a message
                    times = t + np.arange(50) / 50
                    client.publish(f"har/{device}/imu", message(times, motion(kind, times, seed)),
                                   qos=1).wait_for_publish(5)  # fmt: skip
                    t += 1.0
            client.publish(f"har/{device}/label", "", qos=1).wait_for_publish(5)
        time.sleep(1.5)  # the recorder flushes every second
    finally:
        client.loop_stop()
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert process.returncode == 0, err.lines
    assert sorted(p.name for p in rec.glob("*.csv")) == ["band-1.csv", "band-2.csv"]

    config_path = tmp_path / "band.toml"
    text, _ = write_config(rec, config_path)
    config_path.write_text(text)
    config = load_config(config_path)
    assert config.classes == CLASSES and config.data.rate_hz == 50.0
    assert config.data.channels == HAPT_CHANNELS and config.data.units[:3] == ("g", "g", "g")
    assert config.data.test_subjects == ("band-2",)

    checkpoint = tmp_path / "band.pt"
    tiny = ["--epochs", "12", "--set", "model.n_hidden=8", "--set", "model.n_stacked=1", "--set",
            "model.n_residual=1", "--set", "train.batch_size=8", "--set", "train.lr=0.01",
            "--set", "train.threads=1"]  # fmt: skip
    command = [sys.executable, "train.py", "--config", str(config_path), "--out", str(checkpoint), *tiny]
    trained = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]

    live = harstream("mqtt", "--broker", broker.url, "--checkpoint", str(checkpoint), "--headless", "--jsonl",
                     "--hop", "16", "--backend", "torch")  # fmt: skip
    out, live_err = Lines(live.stdout), Lines(live.stderr)
    try:
        assert live_err.wait(lambda ls: any("connected" in x for x in ls), 30), live_err.lines
        client = mqtt_client(broker.url)
        start = time.time()
        switch = start + 5.0
        try:
            while (now := time.time()) < start + 10.0:  # a new wearer, in real time: 5 s of each
                times = now + np.arange(5) / 50
                kind = "UPRIGHT" if now < switch else "SHAKING"
                client.publish("har/band-3/imu", message(times, motion(kind, times, 7)), qos=1)
                time.sleep(0.1)
        finally:
            client.loop_stop()
        lines = out.wait(lambda ls: any(json.loads(x).get("t", 0) > start + 9.5 for x in ls if x), 10)
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(15)
    predictions = [json.loads(x) for x in lines if x.startswith('{"device"')]
    clean = [(p["label"], "UPRIGHT" if p["t"] < switch else "SHAKING") for p in predictions
             if p["t"] < switch - 0.1 or p["t"] - 128 / 50 > switch + 0.1]  # on one side of the switch
    assert len(clean) >= 10, predictions
    right = sum(got == want for got, want in clean)
    assert right >= 0.8 * len(clean), clean


def heard(kind: str = "UPRIGHT", rate: float = 50.0, acc_scale: float = 1.0) -> Listened:
    t = 10.0 + np.arange(int(5 * rate)) / rate
    batch = SampleBatch("dev", t, motion(kind, t, acc_scale=acc_scale), HAPT_CHANNELS, 0.0)
    return Listened([batch], messages=5, announced=set(HAPT_CHANNELS))


UNITS = ("g", "g", "g", "rad/s", "rad/s", "rad/s")
PLUS_X = np.array([1.0, 0.0, 0.0])


def failed(report: dict) -> dict[str, str]:
    return {c["what"]: c["fix"] for c in report["checks"] if not c["ok"]}


def test_check_passes_a_device_that_fits_the_model() -> None:
    report = analyse(heard(), 50.0, HAPT_CHANNELS, UNITS, np.array([0.0, -1.0, 0.0]))
    assert failed(report) == {}
    assert report["gravity"]["axis"] == "-y" and report["gravity"]["still"]
    assert abs(report["rate_hz"] - 50) < 0.5 and report["gaps"] == report["duplicates"] == 0


def test_check_flags_a_wrong_orientation_with_its_fix() -> None:
    fixes = failed(analyse(heard(), 50.0, HAPT_CHANNELS, UNITS, PLUS_X))
    assert set(fixes) == {"orientation"}
    assert "gravity is on -y, the model was trained with it on +x" in fixes["orientation"]


def test_check_flags_acceleration_in_metres_per_second_squared() -> None:
    report = analyse(heard(acc_scale=9.80665), 50.0, HAPT_CHANNELS, UNITS, np.array([0.0, -1.0, 0.0]))
    fixes = failed(report)
    assert set(fixes) == {"acc units"}
    assert 'send "unit": "m/s2" or divide by 9.81' in fixes["acc units"]


def test_check_flags_a_wrong_rate() -> None:
    fixes = failed(analyse(heard(rate=25.0), 50.0, HAPT_CHANNELS, UNITS, np.array([0.0, -1.0, 0.0])))
    assert set(fixes) == {"rate"} and "25.0 Hz" in fixes["rate"] and "resamples" in fixes["rate"]
    fixes = failed(analyse(heard(rate=400.0 * 1.5), 50.0, HAPT_CHANNELS, UNITS, None))
    assert "too far to resample" in fixes["rate"]


def test_check_against_the_shipped_model_over_mqtt_says_what_to_fix(broker) -> None:
    process = harstream("check", "--broker", broker.url, "--device", "wrist-01", "--seconds", "3",
                        "--json")  # fmt: skip
    client = mqtt_client(broker.url)
    try:
        time.sleep(1.0)  # connected by now
        t = 500.0
        for _ in range(10):  # the README's example pose (gravity on -y), in m/s²
            times = t + np.arange(10) / 50
            values = motion("UPRIGHT", times, acc_scale=9.80665)
            client.publish("har/wrist-01/imu", message(times, values), qos=1)
            t += 0.2
            time.sleep(0.15)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        client.loop_stop()
    assert process.returncode == 1, stderr
    report = json.loads(stdout)
    assert set(failed(report)) == {"orientation", "acc units"}, report
    assert report["channels"] == sorted(HAPT_CHANNELS)


@pytest.mark.parametrize(("files", "says"), [
    ({"a.csv": "timestamp,acc_x,label\n0,1,A\n0.02,1,A\n", "b.csv": "timestamp,acc_y,label\n0,1,A\n"},
     "differ from a.csv"),
    ({}, "no .csv recordings"),
    ({"a.csv": "timestamp,acc_x,label\n0,1,A\n0.02,1,A\n"}, "label 1 class"),
    ({"a.csv": "timestamp,acc_x\n0,1\n"}, "needs timestamp and label"),
])  # fmt: skip
def test_init_config_refuses_a_folder_it_cannot_use_in_one_line(tmp_path, files: dict, says: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=says):
        write_config(tmp_path, tmp_path / "x.toml")


def test_init_config_suits_the_preprocessing_to_the_rate_and_the_window_to_the_data(tmp_path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    for n, name in enumerate(("s1", "s2")):  # one subject (the file names), two recordings, 20 Hz
        t = np.arange(200) / 20
        x = np.concatenate([motion("UPRIGHT", t[:100]), motion("SHAKING", t[100:])])
        rows = [f"{ti:.4f},{','.join(f'{v:.5f}' for v in xi)},{'UPRIGHT' if i < 100 else 'SHAKING'},me"
                for i, (ti, xi) in enumerate(zip(t + n * 100, x, strict=True))]  # fmt: skip
        header = f"timestamp,{','.join(HAPT_CHANNELS)},label,subject\n"
        (rec / f"{name}.csv").write_text(header + "\n".join(rows))
    with pytest.raises(ValueError, match="--window 24"):
        write_config(rec, tmp_path / "x.toml")  # 5 s of each class: no 128-sample window
    text, _ = write_config(rec, tmp_path / "x.toml", window=24)
    raw = tomllib.loads(text)
    assert raw["data"]["rate_hz"] == 20.0 and raw["data"]["test_runs"] == ["s2"]
    assert raw["preprocessing"]["lowpass_hz"] < 10.0  # below the Nyquist frequency of 20 Hz
