"""A checkpoint as one self-describing ONNX file: the network, its softmax, and its JSON metadata.

    features (batch, time, n_inputs) float32 ─▶ [normalise ─ blocks ─ classifier ─ softmax] ─▶
    probabilities (batch, n_classes) float32

The input is what the live scheduler hands the engine: preprocessed, unnormalised feature windows;
the model's normalisation buffers are constants inside the graph, as they are in the torch model.
Every key of the checkpoint's JSON metadata (classes, features, rate, window, preprocessing, ...)
goes into the model's ``metadata_props`` as JSON text, so the file alone tells another device what
to feed it and what comes out (:func:`read_metadata`); so does the sha256 of the checkpoint it was
exported from (:data:`KEY`), which tells ``--backend onnx`` whether the file is up to date.

A checkpoint is exported once, to :func:`onnx_paths`' first place that takes it, and run from there
by onnxruntime alone: a gateway needs no torch. This module imports torch and onnx only inside the
functions that export or inspect, so the backend can import its names and paths without them.

The exporter is torch's TorchScript-based one (``dynamo=False``, deprecated since torch 2.9 but
still there in 2.13): it turns each ``nn.LSTM`` into one ONNX ``LSTM`` operator, which onnxruntime
runs as a fused kernel, and exports this network in about a second. ``dynamo=True`` also emits
``LSTM`` operators for this network but took 30 s on the 2-core development machine; it is the way
forward once the TorchScript exporter is removed.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from model.net.checkpoint_meta import checkpoint_sha256
from model.strict_json import dumps

INPUT = "features"
OUTPUT = "probabilities"
KEY = "checkpoint_sha256"  # metadata_props key: the exported checkpoint's checkpoint_sha256()
# 17 is the first opset with LayerNormalization; the lowest that holds the whole network keeps the
# file loadable by the widest range of runtimes.
OPSET = 17

if TYPE_CHECKING:  # model.net.checkpoint imports torch, which a gateway reading exports lacks
    from model.net.checkpoint import Checkpoint


def onnx_paths(checkpoint: str | Path, digest: str) -> tuple[Path, Path]:
    """Where a checkpoint's export lives, in the order tried: beside it (``model/weights/x.onnx``,
    what ``harstream export`` writes), else, where that folder cannot be written (an installed
    package, a read-only image), the user's cache, under a name that holds the checkpoint's hash."""
    checkpoint = Path(checkpoint)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harstream"
    return checkpoint.with_suffix(".onnx"), cache / f"{checkpoint.stem}-{digest[:16]}.onnx"


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Export the checkpoint to ``out``, or to the first of :func:`onnx_paths` that can be written;
    the file where it went. Needs torch and onnx."""
    from model.net.checkpoint import load_checkpoint  # here: torch, which a gateway reading exports lacks

    digest = checkpoint_sha256(checkpoint)  # before loading: a checkpoint rewritten meanwhile is stale
    loaded = load_checkpoint(checkpoint)
    if out is not None:
        return export_onnx(loaded, out, digest)
    beside, cached = onnx_paths(checkpoint, digest)
    try:
        return export_onnx(loaded, beside, digest)
    except OSError:  # not writable there: the user's cache
        return export_onnx(loaded, cached, digest)


def export_onnx(checkpoint: Checkpoint, path: str | Path, digest: str | None = None) -> Path:
    """Write a loaded checkpoint's network to ``path`` as ONNX, checked by
    ``onnx.checker``; ``digest`` (its :func:`checkpoint_sha256`) goes in as :data:`KEY`. The file
    appears whole or not at all: a reader never sees half a model, and two writers cannot mix."""
    import onnx
    import torch

    path = Path(path)
    model = torch.nn.Sequential(checkpoint.model, torch.nn.Softmax(dim=-1)).eval()  # out: probabilities
    example = torch.zeros(1, checkpoint.window, checkpoint.model.config.n_inputs)
    graph = io.BytesIO()
    with warnings.catch_warnings():
        # The exporter warns that an LSTM exported with batch > 1 may fix the batch size; the example
        # has batch 1 and the axis is declared dynamic, so every batch size runs (tests/test_onnx.py).
        warnings.filterwarnings("ignore", message=".*LSTM.*", category=UserWarning)
        # The network's input-shape assert is evaluated once while tracing; onnxruntime checks the
        # input's rank and feature count against the graph's declared shape instead.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # "You are using the legacy TorchScript-based ONNX export": known, see the docstring.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, (example,), graph, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})  # fmt: skip
    proto = onnx.load_from_string(graph.getvalue())
    for key, value in checkpoint.meta.items():
        if key != KEY:
            proto.metadata_props.add(key=key, value=dumps(value))
    if digest is not None:
        proto.metadata_props.add(key=KEY, value=dumps(digest))
    proto.doc_string = (
        f"harstream {checkpoint.meta.get('name', path.stem)}: {INPUT} float32 [batch, "
        f"{checkpoint.window}, {checkpoint.model.config.n_inputs}] (preprocessed, not normalised) -> "
        f"{OUTPUT} float32 [batch, {checkpoint.model.config.n_classes}]; metadata_props hold JSON"
    )
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        onnx.save(proto, str(part))
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict:
    """The checkpoint metadata that :func:`export_onnx` stored in an ONNX file (less :data:`KEY`)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props if p.key != KEY}


def operator_counts(path: str | Path) -> dict[str, int]:
    """How many nodes of each operator type the graph holds (``LSTM`` is the one that matters)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
