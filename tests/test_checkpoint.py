"""Checkpoints are untrusted files: a bad one is one line naming the file and the field, exit 1."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from live_fixtures import harstream, write_tiny_checkpoint

from model.net.checkpoint import load_checkpoint
from model.net.checkpoint_meta import CheckpointError, CheckpointMeta, parameter_count
from model.net.network import NetworkConfig, ResidualBiLSTM
from streamer.cli import main as cli

SHIPPED = Path(__file__).resolve().parent.parent / "model" / "weights" / "uci_har_3x3.pt"


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_tiny_checkpoint(tmp_path / "tiny.pt")


def edit(path: Path, change) -> Path:
    """The checkpoint's metadata changed by ``change(meta)``, written back in place."""
    meta_file = path.with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    change(meta)
    meta_file.write_text(json.dumps(meta))
    return path


def refused(capsys, checkpoint: Path, *words: str) -> str:
    """Replay with ``checkpoint`` exits 1 with one line that holds ``words``; that line."""
    code = cli.main(["replay", "--checkpoint", str(checkpoint), "--headless", "--speed", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("harstream replay: checkpoint "), err
    for word in words:
        assert word in err, err
    return err


BAD_METADATA = [
    # (what, change to the JSON, words the one line must hold)
    ("negative window", lambda m: m.update(window=-1),
     ['tiny.json: "window" must be an integer from 2 to 10000, got -1']),
    ("window as text", lambda m: m.update(window="128"), ['"window"', '"128"']),
    ("window missing", lambda m: m.pop("window"), ['"window" is missing']),
    ("zero step", lambda m: m.update(step=0), ['"step"']),
    ("zero rate", lambda m: m.update(rate_hz=0), ['"rate_hz" must be a number from 1 to 1000, got 0']),
    ("NaN rate", lambda m: m.update(rate_hz=float("nan")), ['"rate_hz"', "nan"]),
    ("empty classes", lambda m: m.update(classes=[]), ['"classes"']),
    ("short classes", lambda m: m.update(classes=m["classes"][:5]), ['"classes"', "n_classes (6)"]),
    ("classes named twice", lambda m: m.update(classes=[*"abcde", "a"]), ['"classes"', "twice"]),
    ("a class that is not a name", lambda m: m["classes"].__setitem__(0, 7), ['"classes"']),
    ("no input channels", lambda m: m.update(input_channels=[]), ['"input_channels"']),
    ("input channels unlike the preprocessing's", lambda m: m["input_channels"].reverse(),
     ['"preprocessing.inputs" must equal "input_channels"']),
    ("uci_har preprocessing on three channels",
     lambda m: (m.update(input_channels=["acc_x", "acc_y", "acc_z"]),
                m["preprocessing"].update(inputs=["acc_x", "acc_y", "acc_z"])), ['"input_channels"']),
    ("billion hidden units", lambda m: m["network"].update(n_hidden=1e9), ["n_hidden", "got 1000000000.0"]),
    ("hidden units beyond the bound", lambda m: m["network"].update(n_hidden=99_999), ['"network.n_hidden"']),
    ("a network of gigabytes within each bound",
     lambda m: m["network"].update(n_hidden=1024, n_stacked=16, n_residual=16), ['"network"', "parameters"]),
    ("odd hidden units", lambda m: m["network"].update(n_hidden=7), ['"network.n_hidden"', "even"]),
    ("inputs unlike the preprocessing's features", lambda m: m["network"].update(n_inputs=6),
     ['"network.n_inputs"', "(9)"]),
    ("unknown network setting", lambda m: m["network"].update(n_heads=4), ['"network.n_heads"']),
    ("unknown readout", lambda m: m["network"].update(readout="max"), ['"network.readout"', "last, mean"]),
    ("network missing", lambda m: m.pop("network"), ['"network" is missing']),
    ("unknown preprocessing", lambda m: m["preprocessing"].update(kind="fft"), ['"preprocessing"', "fft"]),
    ("low-pass above Nyquist", lambda m: m["preprocessing"].update(lowpass_hz=30.0), ["lowpass_hz"]),
    ("even median kernel", lambda m: m["preprocessing"].update(median_kernel=4), ["median_kernel"]),
    ("filters for another rate", lambda m: m["preprocessing"].update(rate_hz=30.0), ["rate_hz\" must equal"]),
    ("unknown label rule", lambda m: m["config"]["data"].update(label_rule="first"),
     ['"config.data.label_rule"']),
    ("config not an object", lambda m: m.update(config=[1]), ['"config"']),
    # an older file's copies of a fact under "config" must agree with the one inference reads
    ("a config's window unlike the window", lambda m: m["config"]["data"].update(window=64),
     ['"config.data.window" must equal "window" (128), got 64']),
    ("a config's network unlike the network", lambda m: m["config"].update(model={"n_hidden": 16}),
     ['"config.model.n_hidden" must equal "network.n_hidden" (8), got 16']),
    ("a config's filters unlike the filters", lambda m: m["config"].update(preprocessing={"lowpass_hz": 10}),
     ['"config.preprocessing.lowpass_hz" must equal "preprocessing.lowpass_hz" (20.0)']),
    ("a config named otherwise", lambda m: m["config"].update(name="other"), ['"config.name" must equal']),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change", "words"), BAD_METADATA, ids=[b[0] for b in BAD_METADATA])
def test_bad_metadata_is_one_line_naming_the_field(tiny, capsys, what, change, words) -> None:
    refused(capsys, edit(tiny, change), *words)


def test_metadata_that_is_not_a_json_object_is_one_line(tiny, capsys) -> None:
    tiny.with_suffix(".json").write_text("{not json")
    refused(capsys, tiny, "tiny.json: not JSON metadata")
    tiny.with_suffix(".json").write_text("[1, 2]")
    refused(capsys, tiny, "tiny.json: metadata must be a JSON object")
    tiny.with_suffix(".json").write_bytes(b"\xff\xfe\x00garbage")
    refused(capsys, tiny, "tiny.json: not JSON metadata")
    tiny.with_suffix(".json").write_text('{"window": 1' + "0" * 5000 + "}")  # past Python's int limit
    refused(capsys, tiny, "tiny.json: not JSON metadata")


def test_the_metadata_passed_as_the_checkpoint_names_the_weights_file(tiny, capsys) -> None:
    refused(capsys, tiny.with_suffix(".json"), "that is the metadata", str(tiny))


def save_weights(path: Path, obj) -> Path:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getvalue())
    return path


class Payload:
    """Runs a command when unpickled: what an untrusted weights file may carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_files_that_are_not_weights_are_refused_unread(tiny, tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    tiny.write_text("this is not a weights file\n")
    refused(capsys, tiny, "not a weights file saved by harstream (not a torch zip archive)")
    tiny.write_bytes(pickle.dumps({"x": Payload(marker)}))  # a bare pickle: never unpickled at all
    refused(capsys, tiny, "not a torch zip archive")
    tiny.write_text(tiny.with_suffix(".json").read_text())  # the metadata under the weights' name
    refused(capsys, tiny, "not a weights file saved by harstream (JSON, not weights)")
    save_weights(tiny, {"x": Payload(marker)})  # torch's zip, with a forbidden global inside
    err = refused(capsys, tiny, "not a weights file saved by harstream", "objects other than tensors")
    assert "weights_only" not in err
    assert not marker.exists()
    buffer = io.BytesIO()
    torch.save(ResidualBiLSTM(NetworkConfig(n_hidden=8, n_stacked=1, n_residual=1)).state_dict(), buffer)
    tiny.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # cut short, as by a full disk
    refused(capsys, tiny, "not a weights file saved by harstream")
    save_weights(tiny, [torch.zeros(3)])
    refused(capsys, tiny, "not a state_dict of named tensors")


def test_weights_that_do_not_fit_the_network_are_one_line(tiny, capsys) -> None:
    other = ResidualBiLSTM(NetworkConfig(n_hidden=16, n_stacked=1, n_residual=1)).state_dict()
    save_weights(tiny, other)
    refused(capsys, tiny, "the weights do not fit the network in", "has shape")
    deeper = ResidualBiLSTM(NetworkConfig(n_hidden=8, n_stacked=2, n_residual=1)).state_dict()
    save_weights(tiny, deeper)
    refused(capsys, tiny, "unexpected tensor(s)")
    state = ResidualBiLSTM(NetworkConfig(n_hidden=8, n_stacked=1, n_residual=1)).state_dict()
    save_weights(tiny, {k: v for k, v in state.items() if k != "classifier.bias"})
    refused(capsys, tiny, "missing, e.g. classifier.bias")
    state["classifier.bias"][0] = float("nan")
    save_weights(tiny, state)
    refused(capsys, tiny, "classifier.bias holds NaN")
    state["classifier.bias"][0] = 0.0
    state["feature_std"][0] = 0.0
    save_weights(tiny, state)
    refused(capsys, tiny, "feature_std must be positive")


def test_a_hostile_checkpoint_through_the_real_command_is_one_line(tiny, tmp_path) -> None:
    marker = tmp_path / "pwned"
    save_weights(tiny, {"x": Payload(marker)})
    process = harstream("replay", "--checkpoint", str(tiny), "--headless", "--speed", "0")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert err.strip().splitlines() == [
        f"harstream replay: checkpoint {tiny}: not a weights file saved by harstream "
        "(it holds objects other than tensors: posix.system)"
    ]
    assert not marker.exists()


def test_the_shipped_and_the_test_checkpoints_load(tiny) -> None:
    for path in (SHIPPED, tiny):
        checkpoint = load_checkpoint(path)
        assert checkpoint.classes[0] == "WALKING" and checkpoint.window == 128 and checkpoint.rate_hz == 50.0
        assert checkpoint.input_channels == ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
        assert checkpoint.meta["config"]["data"]["label_rule"] == "all"  # dict access keeps working
        assert checkpoint.meta.get("absent", 1) == 1 and "classes" in checkpoint.meta
        assert checkpoint.preprocessing.kind == "uci_har"
    meta = CheckpointMeta.from_json(SHIPPED.with_suffix(".json"))
    with pytest.raises(AttributeError):  # frozen
        meta.window = 3  # type: ignore[misc]
    with pytest.raises(TypeError):  # read-only
        meta.raw["window"] = 3  # type: ignore[index]


def test_the_parameter_bound_counts_what_the_network_holds() -> None:
    for config in (NetworkConfig(), NetworkConfig(n_inputs=113, n_classes=18, n_hidden=10, n_stacked=2,
                                                  n_residual=3, bidirectional=False)):  # fmt: skip
        model = ResidualBiLSTM(config)
        assert parameter_count(config) == sum(t.numel() for t in model.state_dict().values())


def test_checkpoint_error_is_a_value_error_naming_the_file(tiny) -> None:
    edit(tiny, lambda m: m.update(window=1))
    with pytest.raises(CheckpointError, match=r'tiny\.json: "window" must be an integer') as caught:
        load_checkpoint(tiny)
    assert isinstance(caught.value, ValueError)


def test_a_zip_that_is_not_torchs_is_not_weights(tiny, capsys) -> None:
    with zipfile.ZipFile(tiny, "w") as archive:
        archive.writestr("hello.txt", "hi")
    refused(capsys, tiny, "not a weights file saved by harstream")


def test_new_metadata_holds_each_fact_once_and_reads_back_the_whole_config(tiny) -> None:
    from model.train.experiment import from_dict

    stored = json.loads(tiny.with_suffix(".json").read_text())
    assert set(stored["config"]) == {"data", "train"}  # name, preprocessing, network: the top level's
    assert not {"rate_hz", "window", "step", "units"} & set(stored["config"]["data"])
    assert "rate_hz" not in stored["preprocessing"]  # the data's rate, "rate_hz"
    meta = CheckpointMeta.from_json(tiny.with_suffix(".json"))
    whole = meta["config"]
    assert (whole["name"], whole["data"]["window"], whole["data"]["step"]) == ("tiny", 128, 64)
    assert whole["preprocessing"]["rate_hz"] == 50.0 and whole["model"]["n_hidden"] == 8
    config = from_dict(dict(whole))  # what `harstream evaluate` rebuilds the data from
    assert config.data.window == meta.window and config.preprocessing == meta.preprocessing
    assert config.model == meta.network and config.classes == meta.classes
    assert dict(meta.raw) == stored and meta.to_json() == tiny.with_suffix(".json").read_text()
    assert json.loads(json.dumps(dict(meta)))["config"] == whole  # as the ONNX export stores it


def test_older_metadata_keeps_loading_with_its_copies(tiny) -> None:
    # the previously shipped model's metadata, as written then: the config whole, copies included
    older = CheckpointMeta.from_json(Path(__file__).parent / "data" / "older_metadata.json")
    assert older["config"] == older.raw["config"]  # its copies agree: the same config as before
    assert older.network.readout == "last"  # it records no readout: the seed's, as it was trained
    edit(tiny, lambda m: (m.update(config={**m["config"], "name": "tiny"}),
                          m["config"]["data"].update(window=128, step=64, rate_hz=50.0),
                          m["config"].update(model=dict(m["network"])),
                          m["preprocessing"].update(rate_hz=50.0)))  # fmt: skip
    assert load_checkpoint(tiny).meta["config"]["data"]["window"] == 128


def test_metadata_is_checked_when_it_is_made_and_must_be_the_models(tmp_path) -> None:
    from model.config import DataConfig, ExperimentConfig
    from model.net.checkpoint import save_checkpoint

    def made(config: ExperimentConfig) -> CheckpointMeta:
        return CheckpointMeta.from_training(
            tmp_path / "m.json", config, normalisation=([0.0] * 9, [1.0] * 9), best_epoch=1, val=None,
            test={"accuracy": 1.0}, history=[], data_fingerprint="x", command="c", train_seconds=1.0,
            wall_seconds=1.0, machine="m", torch_version="t",
        )  # fmt: skip

    with pytest.raises(CheckpointError, match=r'm\.json: "window" must be an integer from 2'):
        made(ExperimentConfig(data=DataConfig(window=1)))
    meta = made(ExperimentConfig())
    assert meta.network == ExperimentConfig().model and meta["metrics"]["val"] is None
    with pytest.raises(ValueError, match="is not the model's"):
        save_checkpoint(tmp_path / "m.pt", ResidualBiLSTM(NetworkConfig(n_hidden=8)), meta)
    assert not (tmp_path / "m.pt").exists()
