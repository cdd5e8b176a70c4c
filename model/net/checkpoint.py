"""Checkpoints: a torch ``state_dict`` beside a JSON file that carries everything inference needs.

Loading never unpickles arbitrary objects: the weights are read with ``weights_only=True`` (and
only from torch's zip format) and the rest is JSON, read and checked first by
:mod:`model.net.checkpoint_meta` (which needs no torch), so the network is built only at a sane size.
Every failure is one :class:`CheckpointError` line naming the file and the field.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from model.data.signals import PreprocessingSpec
from model.net.checkpoint_meta import CheckpointError, CheckpointMeta, meta_path, read_meta
from model.net.network import ResidualBiLSTM

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6; anything else is refused unread


@dataclass
class Checkpoint:
    model: ResidualBiLSTM
    meta: CheckpointMeta
    path: Path  # the weights file; its .json is beside it

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.classes

    @property
    def window(self) -> int:
        return self.meta.window

    @property
    def rate_hz(self) -> float:
        return self.meta.rate_hz

    @property
    def preprocessing(self) -> PreprocessingSpec:
        return self.meta.preprocessing

    @property
    def input_channels(self) -> tuple[str, ...]:
        return self.meta.input_channels


def save_checkpoint(path: str | Path, model: ResidualBiLSTM, meta: CheckpointMeta) -> None:
    """The weights at ``path`` and ``meta`` (:meth:`CheckpointMeta.from_training`) beside them."""
    if meta.network != model.config:  # the network is rebuilt from the metadata: it must be this one
        raise ValueError(f"the metadata's network {meta.network} is not the model's {model.config}")
    path = Path(path)
    state = model.state_dict()
    unusable = _unusable(state)
    if unusable:  # a NaN model would be written, exit 0, and then be refused by every live command
        raise CheckpointError(f"{path} not saved: {unusable} (training diverged, or its data was not finite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    meta_path(path).write_text(meta.to_json())


def _why(error: Exception) -> str:
    """A short reason from torch's loading errors, which run to many lines and, for a pickle that
    wants a forbidden global, advise ``weights_only=False``: advice never to pass on."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError):
        named = re.search(r"GLOBAL (\S+)", text)
        return "it holds objects other than tensors" + (f": {named.group(1)}" if named else "")
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    if not first or "weights_only" in first:
        return type(error).__name__
    return first[:120]


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: not a weights file saved by harstream ({why})")

    with open(path, "rb") as stream:
        magic = stream.read(len(ZIP_MAGIC))
    if magic != ZIP_MAGIC:  # a raw pickle, JSON, text...: not even handed to the restricted unpickler
        raise refuse("JSON, not weights" if magic.lstrip()[:1] == b"{" else "not a torch zip archive")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here: each is "not a weights file"
        raise refuse(_why(error)) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):  # fmt: skip
        raise refuse("not a state_dict of named tensors")
    return state


def _fit(state: dict[str, torch.Tensor], model: ResidualBiLSTM, path: Path) -> None:
    """The weights must be the network's, tensor for tensor, and finite."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shaped = [k for k in want if k in state and tuple(state[k].shape) != want[k]]

    def fail(what: str) -> CheckpointError:
        network = f"the network in {meta_path(path)}"
        return CheckpointError(f"checkpoint {path}: the weights do not fit {network} ({what})")

    if missing:
        raise fail(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if extra:
        raise fail(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
    if shaped:
        k = shaped[0]
        raise fail(f"{k} has shape {list(state[k].shape)}, the network wants {list(want[k])}")
    unusable = _unusable(state)
    if unusable:
        raise CheckpointError(f"checkpoint {path}: {unusable}")


def _unusable(state: dict[str, torch.Tensor]) -> str | None:
    """Why these weights cannot run (saved or loaded, the same rule), or None."""
    for k, tensor in state.items():
        if not tensor.is_floating_point():
            return f"tensor {k} holds {tensor.dtype}, not floating point"
        if not bool(torch.isfinite(tensor).all()):
            return f"tensor {k} holds NaN or infinite values"
    if "feature_std" in state and not bool((state["feature_std"] > 0).all()):  # windows are divided by it
        return "tensor feature_std must be positive"
    return None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model from the checkpoint alone, in eval mode.

    Raises :class:`CheckpointError` (a ValueError) for a file that is not a usable checkpoint and
    OSError (FileNotFoundError included) for one that cannot be read; nothing else.
    """
    path = Path(path)
    meta = read_meta(path)
    state = _read_weights(path)
    model = ResidualBiLSTM(meta.network)  # bounded: the metadata was checked first
    _fit(state, model, path)
    model.load_state_dict(state)
    return Checkpoint(model.eval(), meta, path)
