"""A checkpoint's JSON metadata, read and checked without torch.

A checkpoint is untrusted input: the metadata is read into one typed, frozen :class:`CheckpointMeta`
and checked against what inference needs before anything is built from it, so a bad file is one
:class:`CheckpointError` line naming the file and the field, never a traceback, a model of
gigabytes, or a recognizer that dies at its first window. The live path needs nothing else from a
checkpoint when it runs the ONNX export (:mod:`streamer.backends`), so nothing here imports torch;
:mod:`model.checkpoint` loads the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from model.config import NetworkConfig
from model.preprocessing import PreprocessingSpec, build_preprocessor

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


@dataclass(frozen=True, eq=False)
class CheckpointMeta(Mapping[str, Any]):
    """A checkpoint's JSON metadata, checked: the fields inference uses, typed, plus the whole
    object read-only (``meta["config"]``, ``meta.get("metrics")``) for everything else."""

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

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

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
        _config(read, data.get("config"))
        raw = MappingProxyType(data)
        return cls(path, name, classes, channels, rate_hz, window, step, spec, network, raw)


def _preprocessing(read: _Reader, d: Mapping[str, Any], rate_hz: float,
                   channels: tuple[str, ...]) -> PreprocessingSpec:  # fmt: skip
    known = {f.name for f in fields(PreprocessingSpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise read.fail(f"preprocessing.{unknown[0]}", "is not a preprocessing setting", shown=False)
    kind = d.get("kind", PreprocessingSpec.kind)
    if not isinstance(kind, str):
        raise read.fail("preprocessing.kind", "must be a string", kind)
    spec_rate = read.number(d.get("rate_hz", PreprocessingSpec.rate_hz), "preprocessing.rate_hz", *RATE_HZ)
    # filters designed for one rate would run on samples resampled to another
    if abs(spec_rate - rate_hz) > 1e-9 * rate_hz:
        raise read.fail("preprocessing.rate_hz", f"must equal \"rate_hz\" ({rate_hz:g})", spec_rate)
    inputs = read.names(d.get("inputs", list(channels)), "preprocessing.inputs", MAX_CHANNELS)
    if inputs != channels:  # the scheduler feeds input_channels, in that order, to this preprocessing
        raise read.fail("preprocessing.inputs", "must equal \"input_channels\"", list(inputs))
    params = read.mapping(d.get("params", {}), "preprocessing.params")
    if kind == "uci_har":
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
        if len(inputs) != 6:
            what = "must name acc x, y, z and gyro x, y, z for uci_har preprocessing"
            raise read.fail("input_channels", what, list(inputs))
    spec = PreprocessingSpec.from_dict({**d, "inputs": inputs, "params": dict(params), "rate_hz": spec_rate})
    try:  # the last word: what the scheduler will build must build
        build_preprocessor(spec)
    except (ValueError, TypeError, AssertionError) as error:
        raise read.fail("preprocessing", f"cannot be built ({str(error).splitlines()[0]})", kind) from None
    return spec


def _network(read: _Reader, d: Mapping[str, Any]) -> NetworkConfig:
    known = {f.name for f in fields(NetworkConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise read.fail(f"network.{unknown[0]}", "is not a network setting", shown=False)
    missing = sorted(known - {"dropout", "bidirectional"} - set(d))
    if missing:
        raise read.fail(f"network.{missing[0]}", "is missing", shown=False)
    bidirectional = d.get("bidirectional", True)
    if not isinstance(bidirectional, bool):
        raise read.fail("network.bidirectional", "must be true or false", bidirectional)
    dropout = read.number(d.get("dropout", 0.0), "network.dropout", 0.0, 0.99)
    config = NetworkConfig(
        n_inputs=read.integer(d["n_inputs"], "network.n_inputs", 1, MAX_CHANNELS),
        n_classes=read.integer(d["n_classes"], "network.n_classes", 1, MAX_CLASSES),
        n_hidden=read.integer(d["n_hidden"], "network.n_hidden", *N_HIDDEN),
        n_stacked=read.integer(d["n_stacked"], "network.n_stacked", *N_STACKED),
        n_residual=read.integer(d["n_residual"], "network.n_residual", *N_RESIDUAL),
        bidirectional=bidirectional, dropout=dropout,
    )  # fmt: skip
    if bidirectional and config.n_hidden % 2:
        raise read.fail("network.n_hidden", "must be even for a bidirectional network", config.n_hidden)
    if (count := parameter_count(config)) > MAX_PARAMETERS:
        what = f"asks for {count:,} parameters, more than {MAX_PARAMETERS:,}"
        raise read.fail("network", what, shown=False)
    return config


def _config(read: _Reader, config: Any) -> None:
    """The training config is optional; where present, the parts the live path reads must hold."""
    if config is None:
        return
    data = read.mapping(config, "config").get("data", {})
    rule = read.mapping(data, "config.data").get("label_rule", "all")
    if rule not in LABEL_RULES:
        raise read.fail("config.data.label_rule", f"must be one of {', '.join(LABEL_RULES)}", rule)


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
    so an export is known to be this checkpoint's without torch (:mod:`model.onnx_export`)."""
    digest = hashlib.sha256()
    for file in (Path(path), meta_path(Path(path))):
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()
