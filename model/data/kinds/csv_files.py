"""Generic CSV recordings, one file each (``harstream record`` writes them; ``csv:PATH`` to replay).

The config names what the files hold: ``data.channels``, ``data.classes`` and ``data.rate_hz``.
"""

from __future__ import annotations

from pathlib import Path

from model.config import DataConfig
from model.data.kinds.base import DatasetKind, Inputs
from model.data.recordings import Recording, read_csv_folder, read_csv_recording


def _classes(data: DataConfig) -> tuple[str, ...]:
    if not data.classes:  # the files name classes by their names; nothing else says which there are
        raise ValueError('data.classes: a csv dataset names its classes, e.g. ["WALKING", "SITTING"]')
    return data.classes


def _recordings(data: DataConfig) -> list[Recording]:
    # with the units: a value beyond any wearable's range refuses the file, naming its line
    return read_csv_folder(Path(data.path), data.channels, data.classes, data.rate_hz, data.units)


def _replay(rest: str, inputs: Inputs) -> dict[str, list[Recording]]:
    """A file, or a folder of them: one device per file, named after it."""
    path = Path(rest)
    paths = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not paths or not paths[0].exists():
        raise FileNotFoundError(f"no CSV recording at {path}")
    # at the file's own rate: the live path resamples a device at another rate, so replay may too
    return {p.stem: [read_csv_recording(p, inputs.channels, inputs.classes, inputs.rate_hz, own_rate=True)]
            for p in paths}  # fmt: skip


KIND = DatasetKind(
    name="csv",
    classes=_classes,
    replay=_replay,
    source_usage="csv:PATH",
    recordings=_recordings,
)
