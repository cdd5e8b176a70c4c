"""Shared fixtures: the real HAPT recordings, loaded once per test session."""

from __future__ import annotations

import pytest

from model.recordings import Recording, load_hapt


@pytest.fixture(scope="session")
def hapt() -> list[Recording]:
    return load_hapt()
