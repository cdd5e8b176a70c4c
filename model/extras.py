"""Which packages the base install leaves out, and the one line that says how to get them.

The base install (``pip install -e .``) is the live path: numpy, scipy, rich, paho-mqtt, pyserial
and onnxruntime, enough for a gateway to recognise activities on ``--backend onnx``. The ``train``
extra adds PyTorch and the rest of the training stack: training, ``harstream export``, ``--backend
torch``, ``evaluate`` and the HAPT recordings. A command that reaches for one of those without it
fails with :func:`missing_package`'s line, not an ImportError traceback.
"""

from __future__ import annotations

import importlib.util

TRAIN_INSTALL = "python3 -m pip install -e '.[train]'"
BASE_INSTALL = "python3 -m pip install -e ."
# import name -> (what to call it, how to install it)
PACKAGES = {
    "torch": ("PyTorch (torch)", TRAIN_INSTALL),
    "onnx": ("the onnx package", TRAIN_INSTALL),
    "sklearn": ("scikit-learn", TRAIN_INSTALL),
    "pandas": ("pandas", TRAIN_INSTALL),
    "onnxruntime": ("onnxruntime", BASE_INSTALL),
    "matplotlib": ("matplotlib", "python3 -m pip install -e '.[plot]'"),
}


def missing_package(error: ImportError) -> str | None:
    """One line for an uninstalled package that :data:`PACKAGES` knows, else None.

    >>> missing_package(ModuleNotFoundError("No module named 'torch'", name="torch"))[:37]
    'needs PyTorch (torch), not installed:'
    >>> missing_package(ModuleNotFoundError("No module named 'x'", name="x")) is None
    True
    """
    name = (error.name or "").partition(".")[0]
    if not isinstance(error, ModuleNotFoundError) or name not in PACKAGES:
        return None
    what, install = PACKAGES[name]
    return f"needs {what}, not installed: {install}"


def has_torch() -> bool:
    """Whether PyTorch is installed, without importing it (seconds, on a small machine)."""
    return importlib.util.find_spec("torch") is not None
