"""Inference backends: the same network run by PyTorch or by onnxruntime, behind one method.

A backend maps feature windows (N, T, F) float32 to class probabilities (N, K) float32 in one
call; :class:`streamer.core.engine.InferenceEngine` splits batches and keeps everything else.

Nothing here imports torch at import time: the ONNX backend runs a checkpoint's export with
onnxruntime alone, which is what lets a gateway recognise activities without PyTorch installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.extras import TRAIN_INSTALL, has_torch
from model.net.checkpoint_meta import checkpoint_sha256
from model.net.onnx_export import INPUT, KEY, OUTPUT, export_checkpoint, onnx_paths

if TYPE_CHECKING:
    from model.net.network import ResidualBiLSTM

BACKENDS = ("torch", "onnx")


class OnnxError(ValueError):
    """An ONNX model that cannot be run; the message is one line naming the file."""


def default_backend() -> str:
    """torch where it is installed (the reference the figures were measured on), else onnx."""
    return "torch" if has_torch() else "onnx"


class TorchBackend:
    """The eager PyTorch model; its thread count is torch's (``torch.set_num_threads``)."""

    def __init__(self, model: ResidualBiLSTM) -> None:
        self.model = model.eval()
        self.n_classes = model.config.n_classes

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return torch.softmax(self.model(torch.as_tensor(x, dtype=torch.float32)), dim=-1).numpy()


class OnnxBackend:
    """An ONNX file written by :func:`model.net.onnx_export.export_onnx`, run by onnxruntime on the CPU."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own exception types: each is "not a usable model"
            why = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
            raise OnnxError(f"{path}: not a usable ONNX model ({why})") from None
        self.n_classes = int(self.session.get_outputs()[0].shape[-1])
        # the sha256 of the checkpoint it was exported from, stored as JSON text; None: it does not say
        key = self.session.get_modelmeta().custom_metadata_map.get(KEY, "null")
        try:
            self.checkpoint_sha256: str | None = json.loads(key)
        except ValueError:
            self.checkpoint_sha256 = None

    @classmethod
    def for_checkpoint(cls, checkpoint: str | Path, threads: int = 1) -> OnnxBackend:
        """The checkpoint's ONNX export, from where :func:`model.net.onnx_export.onnx_paths` keeps it,
        up to date (its :data:`~model.net.onnx_export.KEY` is the checkpoint's sha256); exported first
        when there is none, which needs torch. Without torch, a missing, stale or corrupt export is
        one line that says what to do."""
        digest = checkpoint_sha256(checkpoint)
        problems = []
        for path in onnx_paths(checkpoint, digest):
            if not path.exists():
                continue
            try:
                backend = cls(path, threads)
            except OnnxError as error:  # corrupt: exported again, over it
                problems.append(str(error))
                continue
            if backend.checkpoint_sha256 == digest:
                return backend
            problems.append(f"{path} is stale (exported from another version of {Path(checkpoint).name})"
                            if backend.checkpoint_sha256 else f"{path} does not say which checkpoint it is")
        if not has_torch():
            why = problems[0] if problems else f"{checkpoint} has no ONNX export yet"
            raise OnnxError(f"{why}; exporting it needs PyTorch, not installed: run `harstream export "
                            f"--checkpoint {checkpoint}` where it is and copy the .onnx beside the "
                            f"checkpoint, or {TRAIN_INSTALL}")  # fmt: skip
        return cls(export_checkpoint(checkpoint), threads)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]


def make_backend(name: str, checkpoint: str | Path, threads: int = 1) -> TorchBackend | OnnxBackend:
    """The backend called ``name`` for the checkpoint whose weights file is ``checkpoint``, with
    ``threads`` intra-op threads (0: the library's default; torch's are process-wide)."""
    if name == "torch":
        import torch

        from model.net.checkpoint import load_checkpoint

        if threads > 0:
            torch.set_num_threads(threads)
        return TorchBackend(load_checkpoint(checkpoint).model)
    if name == "onnx":
        return OnnxBackend.for_checkpoint(checkpoint, threads)
    raise ValueError(f"unknown backend {name!r}: {' or '.join(BACKENDS)}")
