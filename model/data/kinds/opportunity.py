"""OPPORTUNITY, the 2011 challenge's subset (``opportunity:PATH/S2-ADL4.dat`` to replay one run).

Sensor dropouts are NaN in the files: its preprocessing carries the last observed value forward,
so the live path fills such gaps instead of dropping the samples. Class 0 (Null) is scored apart.
"""

from __future__ import annotations

from pathlib import Path

from model.config import DataConfig
from model.data import opportunity
from model.data.kinds.base import DatasetKind, Inputs
from model.data.recordings import Recording


def _classes(data: DataConfig) -> tuple[str, ...]:
    if data.labels not in opportunity.LABEL_SETS:
        raise ValueError(f"data.labels: unknown OPPORTUNITY labels {data.labels!r} (gestures | locomotion)")
    return opportunity.classes(data.labels)


def _recordings(data: DataConfig) -> list[Recording]:
    runs = (*data.train_runs, *data.val_runs, *data.test_runs)
    return opportunity.load_opportunity(data.path, data.labels, runs if data.train_runs else None)


def _replay(rest: str, inputs: Inputs) -> dict[str, list[Recording]]:
    """One ``.dat`` run as one device, labelled as the checkpoint's classes say."""
    labels = next((k for k in opportunity.LABEL_SETS if opportunity.classes(k) == inputs.classes), None)
    if labels is None:
        raise ValueError("this checkpoint was not trained on OPPORTUNITY: train one with "
                         "python train.py --config configs/opportunity_18.toml --data-zip ...")  # fmt: skip
    recording = opportunity.load_opportunity_run(Path(rest), labels=labels)
    return {recording.name: [recording]}


KIND = DatasetKind(
    name="opportunity",
    classes=_classes,
    replay=_replay,
    source_usage="opportunity:PATH",
    recordings=_recordings,
    preprocessing="opportunity",
    null_class=0,
)
