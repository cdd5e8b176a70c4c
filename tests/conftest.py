"""Shared fixtures: the real HAPT recordings, loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from live_fixtures import broker, short_recording  # noqa: F401 - fixtures for the MQTT/serial tests

from model.recordings import Recording, load_hapt


@pytest.fixture(scope="session")
def hapt() -> list[Recording]:
    return load_hapt()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained 1x1 network with the shipped model's inputs: enough to test the plumbing."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import ExperimentConfig
    from model.network import NetworkConfig, ResidualBiLSTM
    from model.preprocessing import PreprocessingSpec
    from model.recordings import HAPT_ACTIVITIES

    torch.manual_seed(0)
    model = ResidualBiLSTM(NetworkConfig(n_hidden=8, n_stacked=1, n_residual=1, dropout=0.0))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    spec = PreprocessingSpec()
    save_checkpoint(path, model, {
        "name": "tiny", "classes": list(HAPT_ACTIVITIES), "input_channels": list(spec.inputs),
        "rate_hz": 50.0, "window": 128, "step": 64, "preprocessing": spec.to_dict(),
        "config": ExperimentConfig().to_dict(),
    })  # fmt: skip
    return path
