"""Shared fixtures: the real HAPT recordings, loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from live_fixtures import broker, short_recording, write_tiny_checkpoint  # noqa: F401 - broker, short_recording: fixtures

from model.recordings import Recording, load_hapt


@pytest.fixture(scope="session")
def hapt() -> list[Recording]:
    return load_hapt()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained 1x1 network with the shipped model's inputs: enough to test the plumbing."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
