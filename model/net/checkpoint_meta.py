"""A checkpoint's JSON metadata, read and checked without torch.

A checkpoint is untrusted input: the metadata is read into one typed, frozen :class:`CheckpointMeta`
and checked against what inference needs before anything is built from it, so a bad file is one
:class:`CheckpointError` line naming the file and the field, never a traceback, a model of
gigabytes, or a recognizer that dies at its first window. The live path needs nothing else from a
checkpoint when it runs the ONNX export (:mod:`streamer.core.backends`), so nothing here imports torch;
:mod:`model.net.checkpoint` loads the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from model.config import READOUTS, ExperimentConfig, NetworkConfig
from model.data.preprocessing import build_preprocessor
from model.data.signals import PREPROCESSING_KINDS, PreprocessingKind, PreprocessingSpec

# The shipped model: what every command runs unless it is given --checkpoint.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "weights" / "uci_har_3x3.pt"

# Bounds on what a checkpoint may ask for. Generous for any wearable model, and small enough that
# a typo (or a hostile file) cannot make inference allocate gigabytes.
WINDOW = (2, 10_000)  # samples
RATE_HZ = (1.0, 1000.0)
MAX_CLASSES = 1000
MAX_CHANNELS = 1000
N_HIDDEN = (2, 1024)
N_STACKED = (1, 16)
N_RESIDUAL = (1, 16)
MAX_PARAMETERS = 50_000_000  # 200 MB of float32
MAX_META_BYTES = 50 << 20
MAX_NAME = 200  # characters in a class or channel name
LABEL_RULES = ("all", "last")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the field."""


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Reader:
    """Typed fields out of a JSON object; each failure names the file and the field."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def fail(self, field: str, what: str, value: Any = None, shown: bool = True) -> CheckpointError:
        got = f", got {_shown(value)}" if shown else ""
        return CheckpointError(f"checkpoint {self.where}: {json.dumps(field)} {what}{got}")

    def get(self, data: Mapping[str, Any], key: str, field: str | None = None) -> Any:
        field = field or key
        if key not in data:
            raise CheckpointError(f"checkpoint {self.where}: {json.dumps(field)} is missing")
        return data[key]

    def integer(self, value: Any, field: str, lo: int, hi: int) -> int:
        # bool is an int to Python, and 1e9 is a float to JSON: neither is a count
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self.fail(field, f"must be an integer from {lo} to {hi}", value)
        return value

    def number(self, value: Any, field: str, lo: float, hi: float) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not lo <= value <= hi:
            raise self.fail(field, f"must be a number from {lo:g} to {hi:g}", value)
        return float(value)

    def names(self, value: Any, field: str, most: int) -> tuple[str, ...]:
        """A non-empty list of distinct, non-empty strings."""
        if not isinstance(value, list) or not 1 <= len(value) <= most:
            raise self.fail(field, f"must be a list of 1 to {most} names", value)
        for item in value:
            if not isinstance(item, str) or not item.strip() or len(item) > MAX_NAME:
                raise self.fail(field, f"must hold names of 1 to {MAX_NAME} characters", item)
        twice = next((v for i, v in enumerate(value) if v in value[:i]), None)
        if twice is not None:
            raise self.fail(field, "names a value twice", twice)
        return tuple(value)

    def mapping(self, value: Any, field: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, "must be a JSON object", value)
        return value


def parameter_count(config: NetworkConfig) -> int:
    """How many numbers :class:`ResidualBiLSTM` holds for ``config``, without building it."""
    directions = 2 if config.bidirectional else 1
    width = config.n_hidden // directions

    def layer(n_in: int) -> int:  # a ReLU dense layer into an LSTM of ``width`` units, per direction
        return directions * (n_in * width + width + 8 * width * width + 8 * width)

    inputs = [config.n_inputs] + [config.n_hidden] * (config.n_stacked - 1)
    blocks = sum(config.n_residual * layer(n_in) + 2 * config.n_hidden for n_in in inputs)
    return 2 * config.n_inputs + blocks + config.n_hidden * config.n_classes + config.n_classes


# The validation scores a checkpoint records; the test scores are all but the tables.
VAL_METRICS = ("accuracy", "f1_weighted", "f1_macro", "n_windows")
TEST_TABLES = ("per_class", "confusion")
# The facts of a training config that the metadata holds at its top level, where inference reads
# them: (config section, field, top-level key). The file holds each once; see _experiment_config.
_TOP_LEVEL_FACTS = (("data", "rate_hz", "rate_hz"), ("data", "window", "window"), ("data", "step", "step"),
                    ("data", "units", "input_units"))  # fmt: skip


@dataclass(frozen=True, eq=False)
class CheckpointMeta(Mapping[str, Any]):
    """A checkpoint's JSON metadata, checked: the fields inference uses, typed, plus the whole
    object read-only (``meta["config"]``, ``meta.get("metrics")``) for everything else.

    ``meta["config"]`` is the whole training config, in newer files (each fact once: the window, the
    rate, the preprocessing and the network only at the top level) as in older ones (copies under
    "config" too, checked to agree); ``raw`` is the file's object as it is.
    """

    path: Path
    name: str
    classes: tuple[str, ...]
    input_channels: tuple[str, ...]
    rate_hz: float
    window: int
    step: int | None
    preprocessing: PreprocessingSpec
    network: NetworkConfig
    raw: Mapping[str, Any]
    config: Mapping[str, Any] | None  # the training config, whole; None where the file has none

    def __getitem__(self, key: str) -> Any:
        if key == "config" and self.config is not None:
            return self.config
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def gravity(self) -> np.ndarray | None:
        """Where gravity pointed in the training data, a unit vector in the device's axes; None where
        that is not known. The one answer, read by ``harstream check`` (a device worn another way up)
        and by calibration (the rotation onto the model's axes): the mean of the features that hold
        gravity (the preprocessing's) over the training windows, which the metadata records as their
        normalisation's mean."""
        at = self.preprocessing.gravity
        normalisation = self.raw.get("normalisation")
        mean = normalisation.get("mean") if isinstance(normalisation, Mapping) else None
        if at is None or not isinstance(mean, list) or len(mean) != len(self.preprocessing.features):
            return None
        try:
            g = np.array([float(mean[i]) for i in at])
        except (TypeError, ValueError):
            return None
        norm = float(np.linalg.norm(g))
        return g / norm if math.isfinite(norm) and norm > 0 else None

    @classmethod
    def from_training(
        cls,
        path: str | Path,
        config: ExperimentConfig,
        *,
        normalisation: tuple[Sequence[float], Sequence[float]],
        best_epoch: int,
        val: Mapping[str, Any] | None,
        test: Mapping[str, Any],
        history: Sequence[Mapping[str, Any]],
        data_fingerprint: str,
        command: str,
        train_seconds: float,
        wall_seconds: float,
        machine: str,
        torch_version: str,
        distributed: Mapping[str, Any] | None = None,
    ) -> CheckpointMeta:
        """The metadata of a model trained on ``config`` and scored ``val`` (None: no validation)
        and ``test``, for the metadata file ``path``; checked as it will be read.

        Each fact is written once: what inference reads at the top level (name, classes, channels
        and units, features, rate, window, step, preprocessing, network, normalisation) and, under
        "config", only what is left of the training config (the data's source and split, the
        training recipe). ``normalisation`` is the training (mean, std) of each feature.
        """
        experiment = config.to_dict()
        preprocessing = experiment["preprocessing"]
        del preprocessing["rate_hz"]  # the data's: "rate_hz"
        rest = {k: v for k, v in experiment["data"].items() if k not in {f for _, f, _ in _TOP_LEVEL_FACTS}}
        mean, std = normalisation
        meta: dict[str, Any] = {
            "name": config.name,
            "classes": list(config.classes),
            "input_channels": list(config.preprocessing.inputs),
            "input_units": list(config.data.units),
            "features": list(config.preprocessing.features),
            "rate_hz": config.data.rate_hz,
            "window": config.data.window,
            "step": config.data.step,
            "preprocessing": preprocessing,
            "network": experiment["model"],
            "normalisation": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
            "config": {"data": rest, "train": experiment["train"]},
            "best_epoch": best_epoch,
            "metrics": {
                "val": None if val is None else {k: val[k] for k in VAL_METRICS},
                "test": {k: v for k, v in test.items() if k not in TEST_TABLES},
            },
            "history": [dict(record) for record in history],
            "data_fingerprint": data_fingerprint,
            "command": command,
            "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(wall_seconds, 1),
            "machine": machine,
            "torch": torch_version,
        }
        if distributed is not None:
            meta["distributed"] = dict(distributed)
        return cls.from_dict(meta, Path(path))

    def to_json(self) -> str:
        """The metadata file's text: the object as read or built (``raw``), one copy of each fact."""
        return json.dumps(dict(self.raw), indent=2) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> CheckpointMeta:
        path = Path(path)
        if path.stat().st_size > MAX_META_BYTES:
            raise CheckpointError(f"checkpoint {path}: over {MAX_META_BYTES >> 20} MB, not metadata")
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, an int of 5000 digits
            why = str(error).splitlines()[0]
            raise CheckpointError(f"checkpoint {path}: not JSON metadata ({why})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> CheckpointMeta:
        read = _Reader(path)
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint {path}: metadata must be a JSON object, got {_shown(data)}")
        name = data.get("name", path.stem)
        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise read.fail("name", f"must be a string of at most {MAX_NAME} characters", name)
        window = read.integer(read.get(data, "window"), "window", *WINDOW)
        step = data.get("step")
        if step is not None:
            step = read.integer(step, "step", 1, WINDOW[1])
        rate_hz = read.number(read.get(data, "rate_hz"), "rate_hz", *RATE_HZ)
        classes = read.names(read.get(data, "classes"), "classes", MAX_CLASSES)
        channels = read.names(read.get(data, "input_channels"), "input_channels", MAX_CHANNELS)
        preprocessing = read.mapping(read.get(data, "preprocessing"), "preprocessing")
        spec = _preprocessing(read, preprocessing, rate_hz, channels)
        network = _network(read, read.mapping(read.get(data, "network"), "network"))
        if network.n_classes != len(classes):
            n = network.n_classes
            raise read.fail("classes", f"must name as many classes as network.n_classes ({n})", list(classes))
        if network.n_inputs != len(spec.features):
            what = f"must equal the number of features {spec.kind} preprocessing makes ({len(spec.features)})"
            raise read.fail("network.n_inputs", what, network.n_inputs)
        features = data.get("features")
        if features is not None and len(read.names(features, "features", MAX_CHANNELS)) != network.n_inputs:
            raise read.fail("features", f"must name {network.n_inputs} features (network.n_inputs)", features)
        config = _experiment_config(read, data, spec, network)
        raw = MappingProxyType(data)
        return cls(path, name, classes, channels, rate_hz, window, step, spec, network, raw, config)


def _preprocessing(read: _Reader, d: Mapping[str, Any], rate_hz: float,
                   channels: tuple[str, ...]) -> PreprocessingSpec:  # fmt: skip
    known = {f.name for f in fields(PreprocessingSpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise read.fail(f"preprocessing.{unknown[0]}", "is not a preprocessing setting", shown=False)
    name = d.get("kind", PreprocessingSpec.kind)
    if not isinstance(name, str):
        raise read.fail("preprocessing.kind", "must be a string", name)
    kind = PREPROCESSING_KINDS.get(name)
    if kind is None:
        unknown = f"unknown preprocessing {name!r} (one of {', '.join(PREPROCESSING_KINDS)})"
        raise read.fail("preprocessing", f"cannot be built ({unknown})", name)
    # The preprocessing runs at the data's rate: newer files leave it out here, older ones repeat
    # it, and filters designed for one rate must not run on samples resampled to another.
    spec_rate = read.number(d.get("rate_hz", rate_hz), "preprocessing.rate_hz", *RATE_HZ)
    if abs(spec_rate - rate_hz) > 1e-9 * rate_hz:
        raise read.fail("preprocessing.rate_hz", f"must equal \"rate_hz\" ({rate_hz:g})", spec_rate)
    inputs = read.names(d.get("inputs", list(channels)), "preprocessing.inputs", MAX_CHANNELS)
    if inputs != channels:  # the scheduler feeds input_channels, in that order, to this preprocessing
        raise read.fail("preprocessing.inputs", "must equal \"input_channels\"", list(inputs))
    params = read.mapping(d.get("params", {}), "preprocessing.params")
    if kind.filters:
        read.integer(d.get("median_kernel", 3), "preprocessing.median_kernel", 1, 99)
        if d.get("median_kernel", 3) % 2 == 0:
            raise read.fail("preprocessing.median_kernel", "must be odd", d["median_kernel"])
        read.integer(d.get("lowpass_order", 3), "preprocessing.lowpass_order", 1, 10)
        nyquist = rate_hz / 2
        for key in ("lowpass_hz", "gravity_hz"):
            value = d.get(key, getattr(PreprocessingSpec, key))
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < nyquist
            if not ok:
                what = f"must be above 0 and below {nyquist:g} Hz (half the rate)"
                raise read.fail(f"preprocessing.{key}", what, value)
    if kind.n_inputs is not None and len(inputs) != kind.n_inputs:
        what = f"must name {kind.inputs} for {kind.name} preprocessing"
        raise read.fail("input_channels", what, list(inputs))
    rotation = d.get("rotation")
    if rotation is not None:
        _rotation(read, rotation, kind)
    spec = PreprocessingSpec.from_dict({**d, "inputs": inputs, "params": dict(params), "rate_hz": spec_rate})
    try:  # the last word: what the scheduler will build must build
        build_preprocessor(spec)
    except (ValueError, TypeError, AssertionError) as error:
        raise read.fail("preprocessing", f"cannot be built ({str(error).splitlines()[0]})", name) from None
    return spec


def _rotation(read: _Reader, value: Any, kind: PreprocessingKind) -> None:
    """A calibration's rotation (model/train/calibration.py): 3 rows of 3 numbers, orthonormal, det +1."""
    what = "must be 3 rows of 3 numbers, a rotation (orthonormal, determinant +1)"
    if not kind.rotates:
        rotating = ", ".join(k.name for k in PREPROCESSING_KINDS.values() if k.rotates)
        raise read.fail("preprocessing.rotation", f"is for {rotating} preprocessing only", shown=False)
    rows = value if isinstance(value, list) and len(value) == 3 else None
    if rows is None or not all(isinstance(r, list) and len(r) == 3 for r in rows):
        raise read.fail("preprocessing.rotation", what, value)
    numbers = [v for r in rows for v in r]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        raise read.fail("preprocessing.rotation", what, value)
    m = [[float(v) for v in r] for r in rows]
    gram = [[sum(m[i][k] * m[j][k] for k in range(3)) for j in range(3)] for i in range(3)]
    det = (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
           - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
           + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))  # fmt: skip
    if any(abs(gram[i][j] - (i == j)) > 1e-4 for i in range(3) for j in range(3)) or abs(det - 1) > 1e-4:
        raise read.fail("preprocessing.rotation", what, value)


def _network(read: _Reader, d: Mapping[str, Any]) -> NetworkConfig:
    known = {f.name for f in fields(NetworkConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise read.fail(f"network.{unknown[0]}", "is not a network setting", shown=False)
    missing = sorted(known - {"dropout", "bidirectional", "readout"} - set(d))
    if missing:
        raise read.fail(f"network.{missing[0]}", "is missing", shown=False)
    bidirectional = d.get("bidirectional", True)
    if not isinstance(bidirectional, bool):
        raise read.fail("network.bidirectional", "must be true or false", bidirectional)
    dropout = read.number(d.get("dropout", 0.0), "network.dropout", 0.0, 0.99)
    readout = d.get("readout", "last")
    if readout not in READOUTS:
        raise read.fail("network.readout", f"must be one of {', '.join(READOUTS)}", readout)
    config = NetworkConfig(
        n_inputs=read.integer(d["n_inputs"], "network.n_inputs", 1, MAX_CHANNELS),
        n_classes=read.integer(d["n_classes"], "network.n_classes", 1, MAX_CLASSES),
        n_hidden=read.integer(d["n_hidden"], "network.n_hidden", *N_HIDDEN),
        n_stacked=read.integer(d["n_stacked"], "network.n_stacked", *N_STACKED),
        n_residual=read.integer(d["n_residual"], "network.n_residual", *N_RESIDUAL),
        bidirectional=bidirectional, dropout=dropout, readout=readout,
    )  # fmt: skip
    if bidirectional and config.n_hidden % 2:
        raise read.fail("network.n_hidden", "must be even for a bidirectional network", config.n_hidden)
    if (count := parameter_count(config)) > MAX_PARAMETERS:
        what = f"asks for {count:,} parameters, more than {MAX_PARAMETERS:,}"
        raise read.fail("network", what, shown=False)
    return config


def _experiment_config(read: _Reader, data: Mapping[str, Any], spec: PreprocessingSpec,
                       network: NetworkConfig) -> Mapping[str, Any] | None:  # fmt: skip
    """The training config, whole, or None where there is none (the live path needs none).

    Its window, step, rate, units, name, preprocessing and network are the top level's; an older
    file's copies of them under "config" must agree. Where present, what the live path reads from
    it (the label rule) must hold.
    """
    stored = data.get("config")
    if stored is None:
        return None
    stored = read.mapping(stored, "config")
    rule = read.mapping(stored.get("data", {}), "config.data").get("label_rule", "all")
    if rule not in LABEL_RULES:
        raise read.fail("config.data.label_rule", f"must be one of {', '.join(LABEL_RULES)}", rule)
    # (section, field) -> (where the fact is at the top level, its value as written there)
    facts: dict[tuple[str, str], tuple[str, Any]] = {
        ("data", field): (key, data[key]) for _, field, key in _TOP_LEVEL_FACTS if data.get(key) is not None
    }
    facts |= {("preprocessing", k): (f"preprocessing.{k}", v) for k, v in spec.to_dict().items()}
    facts |= {("model", k): (f"network.{k}", v) for k, v in network.to_dict().items()}
    whole: dict[str, Any] = dict(stored)
    if "name" in data:
        if "name" in stored and stored["name"] != data["name"]:
            raise read.fail("config.name", "must equal \"name\"", stored["name"])
        whole["name"] = data["name"]
    for section in ("data", "preprocessing", "model"):
        whole[section] = dict(read.mapping(stored.get(section, {}), f"config.{section}"))
    for (section, field), (where, value) in facts.items():
        if field in whole[section] and whole[section][field] != value:
            what = f"must equal {json.dumps(where)} ({_shown(value)})"
            raise read.fail(f"config.{section}.{field}", what, whole[section][field])
        whole[section][field] = value
    return whole  # plain, as every object inside raw (ONNX metadata and --json write it as JSON)


def meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def read_meta(path: str | Path) -> CheckpointMeta:
    """The checked metadata of the checkpoint whose weights file is ``path``.

    Raises :class:`CheckpointError` (a ValueError) for metadata that is not usable and OSError
    (FileNotFoundError included) for files that cannot be read; nothing else.
    """
    path = Path(path)
    if path.suffix == ".json":
        raise CheckpointError(f"checkpoint {path}: that is the metadata; pass the weights file "
                              f"{path.with_suffix('.pt')}")  # fmt: skip
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not meta_path(path).exists():
        raise FileNotFoundError(f"checkpoint {path} has no metadata file {meta_path(path)}")
    return CheckpointMeta.from_json(meta_path(path))


def checkpoint_sha256(path: str | Path) -> str:
    """The sha256 of a checkpoint's content, weights and metadata: what its ONNX export is keyed by,
    so an export is known to be this checkpoint's without torch (:mod:`model.net.onnx_export`)."""
    digest = hashlib.sha256()
    for file in (Path(path), meta_path(Path(path))):
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()
