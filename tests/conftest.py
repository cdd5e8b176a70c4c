"""Shared fixtures: the real HAPT recordings, loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from live_fixtures import broker, short_recording, write_tiny_checkpoint  # noqa: F401 - broker, short_recording: fixtures
from rabbitmq_fixture import rabbitmq  # noqa: F401 - a fixture: one node for the session, started when first asked

from model.data.recordings import Recording, load_hapt, write_csv_recording

CSV_SECONDS = 150  # the first minutes of each HAPT recording: a few hundred windows in all


@pytest.fixture(scope="session")
def hapt() -> list[Recording]:
    return load_hapt()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained 1x1 network with the shipped model's inputs: enough to test the plumbing."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def csv_dataset(hapt, tmp_path_factory) -> Path:
    """HAPT subjects 1, 2, 3 and 5, their recordings' first CSV_SECONDS, as generic CSV files."""
    folder = tmp_path_factory.mktemp("csv-recordings")
    for r in hapt:
        if r.subject in {"1", "2", "3", "5"}:
            n = int(CSV_SECONDS * r.rate_hz)
            cut = Recording(r.name, r.subject, r.timestamps[:n], r.values[:n], r.labels[:n],
                            r.channels, r.classes, r.rate_hz)  # fmt: skip
            write_csv_recording(folder / f"{r.name}.csv", cut)
    return folder
