"""A checkpoint as one self-describing ONNX file: the network, its softmax, and its JSON metadata.

    features (batch, time, n_inputs) float32 ─▶ [normalise ─ blocks ─ classifier ─ softmax] ─▶
    probabilities (batch, n_classes) float32

The input is what the live scheduler hands the engine: preprocessed, unnormalised feature windows;
the model's normalisation buffers are constants inside the graph, as they are in the torch model.
Every key of the checkpoint's JSON metadata (classes, features, rate, window, preprocessing, ...)
goes into the model's ``metadata_props`` as JSON text, so the file alone tells another device what
to feed it and what comes out (:func:`read_metadata`).

The exporter is torch's TorchScript-based one (``dynamo=False``, deprecated since torch 2.9 but
still there in 2.13): it turns each ``nn.LSTM`` into one ONNX ``LSTM`` operator, which onnxruntime
runs as a fused kernel, and exports this network in about a second, which matters because
``--backend onnx`` exports at start-up. ``dynamo=True`` also emits ``LSTM`` operators for this
network but took 30 s on the 2-core development machine; it is the way forward once the
TorchScript exporter is removed.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from model.checkpoint import Checkpoint
from model.strict_json import dumps

INPUT = "features"
OUTPUT = "probabilities"
# 17 is the first opset with LayerNormalization; the lowest that holds the whole network keeps the
# file loadable by the widest range of runtimes.
OPSET = 17


def require(name: str) -> ModuleType:
    """Import an optional package, or fail with one line that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"the ONNX backend needs the {name} package: pip install 'harstream[onnx]'"
        raise ImportError(message) from None


class WithSoftmax(nn.Module):
    """The network with its softmax: the ONNX model's output is probabilities, not logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=-1)


def export_onnx(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write the checkpoint's network to ``path`` as ONNX, checked by ``onnx.checker``."""
    onnx = require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = WithSoftmax(checkpoint.model).eval()
    example = torch.zeros(1, checkpoint.window, checkpoint.model.config.n_inputs)
    with warnings.catch_warnings():
        # The exporter warns that an LSTM exported with batch > 1 may fix the batch size; the example
        # has batch 1 and the axis is declared dynamic, so every batch size runs (tests/test_onnx.py).
        warnings.filterwarnings("ignore", message=".*LSTM.*", category=UserWarning)
        # The network's input-shape assert is evaluated once while tracing; onnxruntime checks the
        # input's rank and feature count against the graph's declared shape instead.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # "You are using the legacy TorchScript-based ONNX export": known, see the docstring.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})  # fmt: skip
    proto = onnx.load(str(path))
    for key, value in checkpoint.meta.items():
        proto.metadata_props.add(key=key, value=dumps(value))
    proto.doc_string = (
        f"harstream {checkpoint.meta.get('name', path.stem)}: {INPUT} float32 [batch, "
        f"{checkpoint.window}, {checkpoint.model.config.n_inputs}] (preprocessed, not normalised) -> "
        f"{OUTPUT} float32 [batch, {checkpoint.model.config.n_classes}]; metadata_props hold JSON"
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path


def read_metadata(path: str | Path) -> dict:
    """The checkpoint metadata that :func:`export_onnx` stored in an ONNX file."""
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def operator_counts(path: str | Path) -> dict[str, int]:
    """How many nodes of each operator type the graph holds (``LSTM`` is the one that matters)."""
    onnx = require("onnx")
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
