"""JSON that every parser takes. Python's ``json`` writes ``NaN`` and ``Infinity``, which are not
JSON; every JSON this project writes (stdout, MQTT, files) goes through :func:`dumps`, which writes
a number that is not finite as ``null`` and refuses anything else that JSON cannot say.

>>> dumps({"confidence": float("nan"), "probs": [0.5, float("inf")], "t": 1.5})
'{"confidence": null, "probs": [0.5, null], "t": 1.5}'
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (numpy's too) replaced by None."""
    if isinstance(value, float):  # numpy.float64 is a float
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "item"):  # numpy scalars (float32, int64, ...)
        return finite(value.item())
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(finite(value), allow_nan=False, **kwargs)
