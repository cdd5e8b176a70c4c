"""The ONNX backend: each shipped model exported by `harstream export` and run by onnxruntime gives
the same answers as PyTorch on the held-out test split, and drives the live commands."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from live_fixtures import replay_reference, same_predictions
from test_shipped_model import shipped  # noqa: F401 - a fixture

from model.net.checkpoint_meta import checkpoint_sha256
from model.net.onnx_export import operator_counts, read_metadata
from model.train.experiment import build_splits, from_dict
from streamer.cli.main import main
from streamer.core.backends import OnnxBackend, TorchBackend, make_backend
from streamer.core.engine import InferenceEngine
from streamer.live import DEFAULT_CHECKPOINT


@pytest.fixture(scope="module")
def exported(shipped, tmp_path_factory):  # noqa: F811 - the imported fixture
    """Each shipped model, exported with the command line."""
    path = tmp_path_factory.mktemp("onnx") / "shipped.onnx"
    command = ["export", "--checkpoint", str(shipped.path), "--format", "onnx", "--out", str(path)]
    assert main(command) == 0
    return path


@pytest.fixture(scope="module")
def test_windows(shipped):  # noqa: F811 - the imported fixture
    """The 2874 windows of UCI HAR's nine test subjects, as `harstream evaluate` builds them."""
    splits = build_splits(from_dict(shipped.meta["config"]))
    assert splits.fingerprint == shipped.meta["data_fingerprint"]
    return splits.test


def test_onnx_labels_and_probabilities_agree_with_pytorch_on_the_test_split(shipped, exported, test_windows):  # noqa: F811
    x, y = test_windows.x, test_windows.y
    torch_p = InferenceEngine(TorchBackend(shipped.model)).probabilities_of(x)
    onnx_p = InferenceEngine(OnnxBackend(exported, threads=1)).probabilities_of(x)
    assert onnx_p.shape == torch_p.shape == (2874, len(shipped.classes)) and onnx_p.dtype == np.float32
    agree = float(np.mean(onnx_p.argmax(1) == torch_p.argmax(1)))
    torch_acc, onnx_acc = float(np.mean(torch_p.argmax(1) == y)), float(np.mean(onnx_p.argmax(1) == y))
    max_diff = float(np.abs(onnx_p - torch_p).max())
    print(f"\nonnx vs torch on {len(x)} test windows: labels agree {agree:.2%}, accuracy torch "
          f"{torch_acc:.4f} onnx {onnx_acc:.4f}, max |probability difference| {max_diff:.2e}")
    assert agree >= 0.999
    assert onnx_acc >= torch_acc - 0.003
    assert max_diff < 1e-4
    assert torch_acc == pytest.approx(shipped.meta["metrics"]["test"]["accuracy"], abs=0.002)


def test_onnx_batches_of_any_size_give_the_same_rows(exported, test_windows):
    backend = OnnxBackend(exported, threads=1)
    x = test_windows.x[:37]
    whole = backend.probabilities(x)
    np.testing.assert_allclose(InferenceEngine(backend, max_batch=1).probabilities_of(x), whole, atol=1e-6)
    np.testing.assert_allclose(InferenceEngine(backend, max_batch=16).probabilities_of(x), whole, atol=1e-6)


def test_export_writes_a_checked_self_describing_model_with_lstm_operators(shipped, exported):  # noqa: F811
    onnx.checker.check_model(str(exported), full_check=True)
    assert read_metadata(exported) == shipped.meta  # classes, features, rate, window, preprocessing, ...
    graph = onnx.load(str(exported)).graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*graph.input, *graph.output)]  # fmt: skip
    assert dims == [["batch", shipped.window, len(shipped.meta["features"])], ["batch", len(shipped.classes)]]
    ops = operator_counts(exported)
    network = shipped.model.config
    # every nn.LSTM (each direction of each residual layer of each block) is one fused ONNX LSTM
    assert ops["LSTM"] == network.n_stacked * network.n_residual * 2
    assert "Loop" not in ops and "Scan" not in ops and ops["Softmax"] == 1


def copy_checkpoint(source: Path, folder: Path) -> Path:
    for suffix in (".pt", ".json"):
        shutil.copy(source.with_suffix(suffix), folder / f"model{suffix}")
    return folder / "model.pt"


def key_of(path: Path) -> str | None:
    """The checkpoint hash an exported file carries, read as the backend reads it."""
    return OnnxBackend(path).checkpoint_sha256


def test_export_defaults_to_where_the_onnx_backend_looks(tiny_checkpoint, tmp_path, capsys):
    checkpoint = copy_checkpoint(tiny_checkpoint, tmp_path)
    assert main(["export", "--checkpoint", str(checkpoint)]) == 0
    exported = tmp_path / "model.onnx"
    assert exported.exists() and "model.onnx" in capsys.readouterr().out
    assert read_metadata(exported)["window"] == 128
    assert key_of(exported) == checkpoint_sha256(checkpoint)
    stamp = exported.stat().st_mtime_ns
    make_backend("onnx", checkpoint)  # runs the file export wrote, untouched
    assert exported.stat().st_mtime_ns == stamp


def test_the_onnx_backend_exports_once_and_again_only_when_the_checkpoint_changes(tiny_checkpoint, tmp_path):
    checkpoint = copy_checkpoint(tiny_checkpoint, tmp_path)
    exported = tmp_path / "model.onnx"
    window = np.random.default_rng(0).normal(size=(3, 128, 9)).astype(np.float32)
    first = make_backend("onnx", checkpoint).probabilities(window)
    stamp = exported.stat().st_mtime_ns
    assert make_backend("onnx", checkpoint).probabilities(window) == pytest.approx(first, abs=1e-6)
    assert exported.stat().st_mtime_ns == stamp  # not exported again
    state = torch.load(checkpoint, weights_only=True)
    state["classifier.bias"] += torch.tensor([5.0, 0, 0, 0, 0, 0])  # WALKING wins every window
    torch.save(state, checkpoint)
    after = make_backend("onnx", checkpoint)
    assert key_of(exported) == checkpoint_sha256(checkpoint)
    assert (after.probabilities(window).argmax(1) == 0).all() and not (first.argmax(1) == 0).all()
    exported.write_bytes(b"half a model")  # corrupt: exported again
    assert make_backend("onnx", checkpoint).probabilities(window) == pytest.approx(
        after.probabilities(window), abs=1e-6)


def test_a_folder_that_cannot_take_the_export_sends_it_to_the_user_cache(tiny_checkpoint, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checkpoint = copy_checkpoint(tiny_checkpoint, tmp_path)
    (tmp_path / "model.onnx").mkdir()  # in the way of the file beside the checkpoint, even for root
    make_backend("onnx", checkpoint)
    digest = checkpoint_sha256(checkpoint)
    [cached] = (tmp_path / "cache" / "harstream").iterdir()
    assert cached.name == f"model-{digest[:16]}.onnx" and key_of(cached) == digest
    stamp = cached.stat().st_mtime_ns
    make_backend("onnx", checkpoint)
    assert cached.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no part-written file left


@pytest.mark.parametrize("case", ["missing", "stale", "corrupt"])
def test_without_torch_an_export_that_is_not_up_to_date_is_one_line(case, tiny_checkpoint, short_recording,
                                                                    tmp_path, monkeypatch, capsys):
    checkpoint = copy_checkpoint(tiny_checkpoint, tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if case != "missing":
        assert main(["export", "--checkpoint", str(checkpoint)]) == 0
    if case == "stale":
        meta = json.loads(checkpoint.with_suffix(".json").read_text())
        checkpoint.with_suffix(".json").write_text(json.dumps({**meta, "name": "retrained"}))
    if case == "corrupt":
        checkpoint.with_suffix(".onnx").write_bytes(b"\x08\x07garbage")
    capsys.readouterr()
    monkeypatch.setattr("streamer.core.backends.has_torch", lambda: False)
    argv = ["replay", f"csv:{short_recording}", "--checkpoint", str(checkpoint), "--speed", "0", "--headless"]
    assert main([*argv, "--backend", "onnx"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    why = {"missing": "has no ONNX export yet", "stale": "is stale", "corrupt": "not a usable ONNX model"}
    assert why[case] in err and "needs PyTorch" in err and "harstream export" in err


def test_export_errors_are_one_line(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no trained model" in err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the package were not installed
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the onnx package" in err and "'.[train]'" in err


def test_replay_with_the_onnx_backend_predicts_what_pytorch_predicts(short_recording, capsys):
    assert main(["replay", f"csv:{short_recording}", "--checkpoint", str(DEFAULT_CHECKPOINT), "--speed", "0",
                 "--hop", "64", "--headless", "--jsonl", "--backend", "onnx"]) == 0  # fmt: skip
    *predictions, last = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(predictions) > 10 and last["summary"]["windows"] == len(predictions)
    same_predictions(predictions, replay_reference(DEFAULT_CHECKPOINT, short_recording))  # torch, in process


def test_evaluate_with_the_onnx_backend_reproduces_the_recorded_accuracy(shipped, capsys):  # noqa: F811
    assert main(["evaluate", "--backend", "onnx", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_windows"] == 2874
    assert result["accuracy"] == pytest.approx(shipped.meta["metrics"]["test"]["accuracy"], abs=0.003)
