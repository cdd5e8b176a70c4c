"""The ONNX backend: the shipped model exported by `harstream export` and run by onnxruntime gives
the same answers as PyTorch on the held-out test split, and drives the live commands."""

import json
import shutil
import sys

import numpy as np
import onnx
import pytest
from live_fixtures import replay_reference, same_predictions
from test_shipped_model import shipped  # noqa: F401 - a fixture

from model.config import from_dict
from model.datasets import build_splits
from model.onnx_export import operator_counts, read_metadata
from streamer.backends import OnnxBackend, TorchBackend
from streamer.cli import DEFAULT_CHECKPOINT, main
from streamer.engine import InferenceEngine


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped model, exported with the command line."""
    path = tmp_path_factory.mktemp("onnx") / "shipped.onnx"
    command = ["export", "--checkpoint", str(DEFAULT_CHECKPOINT), "--format", "onnx", "--out", str(path)]
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


def test_export_defaults_to_the_checkpoint_path_with_onnx_suffix(tiny_checkpoint, tmp_path, capsys):
    for suffix in (".pt", ".json"):
        shutil.copy(tiny_checkpoint.with_suffix(suffix), tmp_path / f"model{suffix}")
    assert main(["export", "--checkpoint", str(tmp_path / "model.pt")]) == 0
    assert (tmp_path / "model.onnx").exists() and "model.onnx" in capsys.readouterr().out
    assert read_metadata(tmp_path / "model.onnx")["window"] == 128


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
