"""A gateway without PyTorch: a fresh virtual environment holding only the base install of this
checkout (`python3 -m pip install -e .`, the README's gateway line) cannot import torch, yet its
`harstream replay`, `mqtt` and `serial` recognise from the checkpoint's ONNX export what PyTorch
recognises here; what needs torch says so in one line.

The environment is built from PyPI (pip's cache makes it about 15 s); without a network the test
fails and says why: it is never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_fixtures import Lines, predictions, replay_reference, same_predictions
from test_mqtt import publish_recording
from test_serial import Pty, lines_of

from streamer.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(command: list, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Path:
    """The bin folder of a virtual environment with the base install of a copy of this checkout."""
    root = tmp_path_factory.mktemp("gateway")
    source = root / "harstream"  # a copy: the editable install writes its egg-info beside the code
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "train.py"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("model", "streamer", "replay"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    venv = root / "venv"
    started = time.monotonic()
    made = run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, f"python3 -m venv failed: {made.stderr.strip()}"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    installed = run([*pip, "-e", str(source)], timeout=600)  # the README's gateway line
    if installed.returncode != 0:
        last = (installed.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(f"pip could not install the base package into a fresh virtual environment (is PyPI "
                    f"reachable?): {last}")  # fmt: skip
    print(f"\ngateway environment built in {time.monotonic() - started:.0f} s")
    return venv / "bin"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint, exported here (with torch), as a gateway receives it: .pt, .json, .onnx."""
    folder = tmp_path_factory.mktemp("checkpoint")
    for suffix in (".pt", ".json"):
        shutil.copy(tiny_checkpoint.with_suffix(suffix), folder / f"tiny{suffix}")
    assert main(["export", "--checkpoint", str(folder / "tiny.pt")]) == 0
    return folder / "tiny.pt"


def harstream(gateway: Path, *args: str, **kwargs) -> subprocess.Popen:
    """The gateway's own `harstream` script, run away from the checkout (so nothing imports it)."""
    return subprocess.Popen([str(gateway / "harstream"), *args], cwd=gateway, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_the_gateway_has_no_torch_and_replays_what_pytorch_predicts(gateway, exported, short_recording):
    probe = run([str(gateway / "python"), "-c", "import torch"], cwd=gateway)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    argv = ["replay", f"csv:{short_recording}", "--checkpoint", str(exported), "--backend", "onnx",
            "--speed", "0", "--hop", "64", "--headless", "--jsonl"]  # fmt: skip
    code, out, err = finish(harstream(gateway, *argv))
    assert code == 0, err
    *got, last = [json.loads(line) for line in out.splitlines()]
    want = replay_reference(exported, short_recording)  # PyTorch, in this process
    assert len(want) > 20 and last["summary"]["windows"] == len(want) and last["summary"]["dropped"] == 0
    same_predictions(got, want)  # labels equal, probabilities within 1e-4


def test_mqtt_on_the_gateway_runs_onnx_by_default_and_predicts_what_pytorch_predicts(
        gateway, exported, short_recording, broker):  # fmt: skip
    want = replay_reference(exported, short_recording)
    recognizer = harstream(gateway, "mqtt", "--broker", broker.url, "--checkpoint", str(exported),
                           "--hop", "64", "--headless", "--jsonl", "--client-id", "gateway")  # no --backend
    err, out = Lines(recognizer.stderr), Lines(recognizer.stdout)
    try:
        connected = err.wait(lambda lines: any("connected" in line for line in lines), 30)
        assert any("connected" in line for line in connected), connected
        publish_recording(broker.url, short_recording, "wrist")
        got = predictions(out.wait(lambda lines: len(lines) >= len(want), 30))
    finally:
        recognizer.send_signal(signal.SIGTERM)
        recognizer.wait(10)
    same_predictions(got, want)
    summary = json.loads(out.wait(lambda lines: "summary" in lines[-1], 5)[-1])["summary"]
    assert summary["dropped"] == 0 and summary["windows"] == len(want)


def test_serial_on_the_gateway_predicts_what_pytorch_predicts(gateway, exported, short_recording):
    want = replay_reference(exported, short_recording)
    port = Pty()
    process = harstream(gateway, "serial", "--port", port.path, "--device", "wrist", "--checkpoint",
                        str(exported), "--hop", "64", "--headless", "--jsonl")  # fmt: skip
    err, out = Lines(process.stderr), Lines(process.stdout)
    try:
        assert err.wait(lambda lines: any("opened" in line for line in lines), 30), err.lines
        lines = lines_of(short_recording)
        for i in range(0, len(lines), 100):
            port.write(b"\n".join(lines[i : i + 100]) + b"\n")
        got = predictions(out.wait(lambda lines: len(lines) >= len(want), 30))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        port.close()
    same_predictions(got, want)


def test_on_the_gateway_what_needs_torch_says_so_in_one_line(gateway, exported, short_recording, tmp_path):
    stale = tmp_path / "tiny.pt"
    for suffix in (".pt", ".json", ".onnx"):
        shutil.copy(exported.with_suffix(suffix), stale.with_suffix(suffix))
    meta = json.loads(stale.with_suffix(".json").read_text())
    stale.with_suffix(".json").write_text(json.dumps({**meta, "name": "retrained"}))  # its .onnx: stale
    replay = ["replay", f"csv:{short_recording}", "--speed", "0", "--headless"]
    no_torch = "needs PyTorch (torch), not installed: python3 -m pip install -e '.[train]'"
    cases = {
        "torch backend": ([*replay, "--checkpoint", str(exported), "--backend", "torch"],
                          [no_torch, "--backend onnx"]),
        "export": (["export", "--checkpoint", str(exported), "--out", str(tmp_path / "x.onnx")], [no_torch]),
        "stale export": ([*replay, "--checkpoint", str(stale)],
                         ["is stale", "needs PyTorch", "harstream export"]),
    }  # fmt: skip
    for case, (argv, words) in cases.items():
        code, _, err = finish(harstream(gateway, *argv))
        assert code == 1 and len(err.strip().splitlines()) == 1, (case, err)
        assert all(word in err for word in words), (case, err)
    config = ROOT / "configs" / "uci_har_3x3.toml"
    training = run([str(gateway / "python"), "-m", "train", "--config", str(config)], cwd=gateway)
    assert training.returncode == 1 and training.stderr.strip() == f"train.py: {no_torch}"
