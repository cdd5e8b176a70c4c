"""HAPT: the raw smartphone recordings UCI HAR was cut from (``hapt:2``, ``hapt:2,4,9`` to replay)."""

from __future__ import annotations

from model.config import DataConfig
from model.data.kinds.base import DatasetKind, Inputs
from model.data.recordings import Recording, load_hapt
from model.data.signals import HAPT_ACTIVITIES


def _recordings(data: DataConfig) -> list[Recording]:
    return load_hapt()


def _replay(rest: str, inputs: Inputs) -> dict[str, list[Recording]]:
    """One device per subject, its sessions back to back."""
    try:
        subjects = [int(s) for s in rest.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"bad source 'hapt:{rest}': expected hapt:N or hapt:N,M,...") from None
    if not subjects:
        raise ValueError(f"bad source 'hapt:{rest}': name at least one subject, e.g. hapt:2")
    return {f"hapt-s{s:02d}": load_hapt((s,)) for s in subjects}


KIND = DatasetKind(
    name="hapt",
    classes=lambda data: HAPT_ACTIVITIES,
    replay=_replay,
    source_usage="hapt:N",
    recordings=_recordings,
)
