"""Inference backends: the same network run by PyTorch or by onnxruntime, behind one method.

A backend maps feature windows (N, T, F) float32 to class probabilities (N, K) float32 in one
call; :class:`streamer.engine.InferenceEngine` splits batches and keeps everything else.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from model.checkpoint import Checkpoint
from model.network import ResidualBiLSTM
from model.onnx_export import INPUT, OUTPUT, export_onnx, require


class Backend(Protocol):
    n_classes: int

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, K) class probabilities for windows (N, T, F)."""
        ...


class TorchBackend:
    """The eager PyTorch model; its thread count is torch's (``torch.set_num_threads``)."""

    def __init__(self, model: ResidualBiLSTM) -> None:
        self.model = model.eval()
        self.n_classes = model.config.n_classes

    @torch.inference_mode()
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return torch.softmax(self.model(torch.as_tensor(x, dtype=torch.float32)), dim=-1).numpy()


class OnnxBackend:
    """An ONNX file written by :func:`model.onnx_export.export_onnx`, run by onnxruntime on the CPU."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.n_classes = int(self.session.get_outputs()[0].shape[-1])

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, threads: int = 1) -> OnnxBackend:
        """Export the checkpoint to a temporary file (about a second) and load it."""
        with tempfile.TemporaryDirectory(prefix="harstream-") as folder:
            return cls(export_onnx(checkpoint, Path(folder) / "model.onnx"), threads)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]


def make_backend(name: str, checkpoint: Checkpoint, threads: int = 1) -> Backend:
    """The backend called ``name`` for a checkpoint; ``threads`` only applies to onnx (torch's
    are set process-wide with ``torch.set_num_threads``)."""
    if name == "torch":
        return TorchBackend(checkpoint.model)
    if name == "onnx":
        return OnnxBackend.from_checkpoint(checkpoint, threads)
    raise ValueError(f"unknown backend {name!r}: torch or onnx")
