"""Checkpoints: a torch ``state_dict`` beside a JSON file that carries everything inference needs.

Loading never unpickles arbitrary objects: the weights are read with ``weights_only=True`` and
the rest is JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.network import NetworkConfig, ResidualBiLSTM
from model.preprocessing import PreprocessingSpec


@dataclass
class Checkpoint:
    model: ResidualBiLSTM
    meta: dict[str, Any]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def window(self) -> int:
        return int(self.meta["window"])

    @property
    def rate_hz(self) -> float:
        return float(self.meta["rate_hz"])

    @property
    def preprocessing(self) -> PreprocessingSpec:
        return PreprocessingSpec.from_dict(self.meta["preprocessing"])

    @property
    def input_channels(self) -> tuple[str, ...]:
        return tuple(self.meta["input_channels"])


def meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | Path, model: ResidualBiLSTM, meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    meta = {**meta, "network": model.config.to_dict()}
    meta_path(path).write_text(json.dumps(meta, indent=2) + "\n")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model from the checkpoint alone, in eval mode."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not meta_path(path).exists():
        raise FileNotFoundError(f"checkpoint {path} has no metadata file {meta_path(path)}")
    meta = json.loads(meta_path(path).read_text())
    model = ResidualBiLSTM(NetworkConfig(**meta["network"]))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Checkpoint(model.eval(), meta)
