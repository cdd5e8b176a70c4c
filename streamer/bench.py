"""``harstream bench``: inference and pipeline speed, measured side by side in one run.

The machine is shared and noisy, so every figure is measured in the same process minutes apart,
and the ratios to the baseline (the plain eager model, one window at a time) are what to compare.

FLOPs per window count the multiply-adds of the network (each dense layer, each LSTM direction's
input and recurrent products, the classifier), 2 FLOPs per multiply-add. The reference rate is a
large fp32 matrix product (torch.mm) timed in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from model.checkpoint import Checkpoint
from model.network import ResidualBiLSTM


def flops_per_window(model: ResidualBiLSTM, steps: int) -> int:
    c = model.config
    h = c.n_hidden // 2 if c.bidirectional else c.n_hidden
    directions = 2 if c.bidirectional else 1
    total, n_in = 0, c.n_inputs
    for _ in range(c.n_stacked):
        per_direction = n_in * h + 4 * h * (h + h)  # dense n_in→h, then LSTM: 4 gates × (x + h)
        total += c.n_residual * directions * per_direction * steps
        n_in = c.n_hidden
    total += c.n_hidden * c.n_classes
    return 2 * total


def matmul_rate(seconds: float = 1.0, n: int = 1024) -> float:
    """Measured fp32 matrix-multiply FLOP/s on this machine, now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - started)


def time_calls(fn: Callable[[], object], seconds: float, min_runs: int = 5) -> np.ndarray:
    """Per-call wall times (s) of ``fn`` for about ``seconds``."""
    fn()  # warm up
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < min_runs:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return np.asarray(times)


@torch.inference_mode()
def inference_figures(checkpoint: Checkpoint, seconds: float, batches: tuple[int, ...]) -> dict:
    plain = checkpoint.model.eval()
    steps, n_in = checkpoint.window, plain.config.n_inputs
    flops = flops_per_window(plain, steps)
    rate = matmul_rate(min(seconds, 1.0))
    out: dict = {"flops_per_window": flops, "matmul_flop_per_s": rate, "batches": {}}

    one = torch.randn(1, steps, n_in)
    baseline = time_calls(lambda: plain(one), seconds)
    out["baseline_windows_per_s"] = 1.0 / float(np.mean(baseline))
    out["baseline_p50_ms"] = float(np.median(baseline) * 1000)
    for name, model in (("eager", plain),):
        for batch in batches:
            x = torch.randn(batch, steps, n_in)
            t = time_calls(lambda m=model, x=x: m(x), seconds / len(batches))
            out["batches"][f"{name}/{batch}"] = {
                "windows_per_s": batch / float(np.mean(t)),
                "p50_ms": float(np.median(t) * 1000),
                "p99_ms": float(np.percentile(t, 99) * 1000),
            }
    best_key = max(out["batches"], key=lambda k: out["batches"][k]["windows_per_s"])
    one_keys = [k for k in out["batches"] if k.endswith("/1")]
    batch1_key = min(one_keys, key=lambda k: out["batches"][k]["p50_ms"])
    out["batch1_path"] = batch1_key
    out["batch1_p50_ms"] = out["batches"][batch1_key]["p50_ms"]
    out["batch1_p99_ms"] = out["batches"][batch1_key]["p99_ms"]
    out["best_batch"] = best_key
    out["best_batch_windows_per_s"] = out["batches"][best_key]["windows_per_s"]
    out["flop_efficiency"] = out["best_batch_windows_per_s"] * flops / rate
    out["speedup_batch1_vs_baseline"] = out["baseline_p50_ms"] / out["batch1_p50_ms"]
    out["speedup_best_vs_baseline"] = out["best_batch_windows_per_s"] / out["baseline_windows_per_s"]
    return out
