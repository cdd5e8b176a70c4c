"""The signals a model reads, declared as plain records (no filters, no scipy): the channel names of
an inertial wearable, HAPT's channels and activities, and the preprocessing over them: the spec
every checkpoint stores, and what each preprocessing kind is (its features, where gravity is in them,
the settings it reads). model/data/preprocessing.py computes them; config, checkpoint metadata and
the recordings reader need only these names, so they stay light and near the bottom of the imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# The channel names of an inertial wearable, everywhere (recordings, preprocessing, the wire).
ACC = ("acc_x", "acc_y", "acc_z")  # g
GYRO = ("gyro_x", "gyro_y", "gyro_z")  # rad/s
HAPT_CHANNELS = ACC + GYRO
HAPT_UNITS = ("g", "g", "g", "rad/s", "rad/s", "rad/s")
HAPT_RATE_HZ = 50.0
HAPT_ACTIVITIES = (
    "WALKING",
    "WALKING_UPSTAIRS",
    "WALKING_DOWNSTAIRS",
    "SITTING",
    "STANDING",
    "LAYING",
)

UCI_HAR_INPUTS = ACC + GYRO
UCI_HAR_FEATURES = (
    "body_acc_x",
    "body_acc_y",
    "body_acc_z",
    "body_gyro_x",
    "body_gyro_y",
    "body_gyro_z",
    "total_acc_x",
    "total_acc_y",
    "total_acc_z",
)


@dataclass(frozen=True)
class PreprocessingSpec:
    """Everything needed to rebuild a preprocessor; stored in every checkpoint."""

    kind: str = "uci_har"  # "uci_har" (filters + gravity split), "opportunity" (fill gaps), "identity"
    rate_hz: float = 50.0  # the samples' rate: in an experiment config, data.rate_hz (derived)
    median_kernel: int = 3  # UCI HAR: median filter, then...
    lowpass_hz: float = 20.0  # ...3rd-order Butterworth low-pass at 20 Hz for noise,
    lowpass_order: int = 3
    gravity_hz: float = 0.3  # ...and a 0.3 Hz low-pass that separates gravity from body motion
    inputs: tuple[str, ...] = UCI_HAR_INPUTS
    params: dict[str, Any] = field(default_factory=dict)
    # uci_har: a 3x3 rotation (rows) applied to acc and to gyro before anything else, mapping a
    # device's axes onto the model's (a per-wearer calibration, model/train/calibration.py); () = none
    rotation: tuple[tuple[float, ...], ...] = ()

    @property
    def features(self) -> tuple[str, ...]:
        return preprocessing_kind(self.kind).features(self.inputs)

    @property
    def gravity(self) -> tuple[int, int, int] | None:
        """The indices, in :attr:`features`, of the three features that hold gravity (x, y, z): the
        mean of those over a wearer's windows points where gravity did. None where there are none."""
        names = preprocessing_kind(self.kind).gravity
        features = self.features
        if not set(names) <= set(features):
            return None
        x, y, z = (features.index(name) for name in names)
        return x, y, z

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        if self.rotation:  # written only where there is one: older specs' digests stay as they were
            d["rotation"] = [list(row) for row in self.rotation]
        else:
            del d["rotation"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessingSpec:
        d = dict(d)
        d["inputs"] = tuple(d.get("inputs", UCI_HAR_INPUTS))
        d["rotation"] = tuple(tuple(float(v) for v in row) for row in d.get("rotation") or ())
        return cls(**d)



@dataclass(frozen=True)
class PreprocessingKind:
    """What one preprocessing (``PreprocessingSpec.kind``) is, answered by itself: the features it
    makes, where gravity is in them, and which of the spec's settings it reads. Checkpoint metadata,
    calibration and an experiment's network sizes read these, never the kind's name."""

    name: str
    features: Callable[[tuple[str, ...]], tuple[str, ...]]  # its features, from its inputs
    gravity: tuple[str, str, str] = ("acc_x", "acc_y", "acc_z")  # the features holding gravity, x y z
    filters: bool = False  # median and low-pass filters designed for the rate (their settings checked)
    inputs: str = ""  # the inputs it needs, for messages (any, where empty)
    n_inputs: int | None = None  # how many (None: any)
    rotates: bool = False  # turns acc and gyro by the spec's rotation (a per-wearer calibration)


PREPROCESSING_KINDS: dict[str, PreprocessingKind] = {k.name: k for k in (
    PreprocessingKind("uci_har", lambda inputs: UCI_HAR_FEATURES,
                      gravity=("total_acc_x", "total_acc_y", "total_acc_z"), filters=True,
                      inputs="acc x, y, z and gyro x, y, z", n_inputs=6, rotates=True),
    PreprocessingKind("opportunity", lambda inputs: inputs),
    PreprocessingKind("identity", lambda inputs: inputs),
)}  # fmt: skip


def preprocessing_kind(name: str) -> PreprocessingKind:
    """The preprocessing called ``name``; a ValueError naming the known ones otherwise."""
    try:
        return PREPROCESSING_KINDS[name]
    except KeyError:
        known = ", ".join(PREPROCESSING_KINDS)
        raise ValueError(f"unknown preprocessing {name!r} (one of {known})") from None
