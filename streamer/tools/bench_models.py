"""Cost beside accuracy for several models, measured side by side in one run (docs/results.md).

    python -m streamer.tools.bench_models model/weights/uci_har_3x3.pt model/weights/uci_har_2x2_fleet.pt

For each checkpoint: MFLOP per window (:func:`streamer.tools.bench.flops_per_window`), windows per second
through onnxruntime at one batch size on one thread, and the scores its metadata records
(cross-validation for a fold's model, test for a refit). The models take turns, a slice of time
each, round after round, and the median over rounds is reported: on a shared machine a burst of
load then touches every model alike, so the ratios hold even where the absolute figures wander.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from model.net.checkpoint import load_checkpoint
from model.strict_json import dumps
from streamer.core.backends import OnnxBackend
from streamer.tools.bench import flops_per_window, time_calls


def compare(paths: list[str], batch: int = 64, rounds: int = 5, seconds: float = 1.0,
            threads: int = 1) -> list[dict]:  # fmt: skip
    """One row per checkpoint: name, MFLOP per window, windows/s (median over ``rounds``), scores."""
    rows, runners = [], []
    for path in paths:
        checkpoint = load_checkpoint(path)
        onnx = OnnxBackend.for_checkpoint(path, threads=threads)
        x = np.random.default_rng(0).normal(size=(batch, checkpoint.window, checkpoint.model.config.n_inputs))
        x = x.astype(np.float32)
        onnx.probabilities(x)  # warm up
        runners.append(lambda onnx=onnx, x=x: onnx.probabilities(x))
        metrics = checkpoint.meta.raw.get("metrics") or {}
        rows.append({
            "checkpoint": str(path),
            "mflop_per_window": flops_per_window(checkpoint.model, checkpoint.window) / 1e6,
            "val_f1_weighted": (metrics.get("val") or {}).get("f1_weighted"),
            "test_accuracy": (metrics.get("test") or {}).get("accuracy"),
            "test_f1_weighted": (metrics.get("test") or {}).get("f1_weighted"),
            "rates": [],
        })  # fmt: skip
    for _ in range(rounds):
        for row, run in zip(rows, runners, strict=True):
            row["rates"].append(batch / float(np.mean(time_calls(run, seconds, min_runs=2))))
    for row in rows:
        row["windows_per_s"] = float(np.median(row.pop("rates")))
    return rows


def main(argv: list[str] | None = None) -> int:
    from streamer.options import OneLineParser, count, number

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--batch", type=count(1, 65_536), default=64)
    p.add_argument("--rounds", type=count(1, 10_000), default=5)
    p.add_argument("--seconds", type=number(0.01, 3600), default=1.0, help="each model's slice of a round")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        rows = compare(args.checkpoints, args.batch, args.rounds, args.seconds)
    except (ValueError, OSError, ImportError) as error:  # CheckpointError is a ValueError
        print(f"bench_models: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(dumps(rows))
        return 0
    print(f"{'checkpoint':48} {'MFLOP':>7} {'windows/s':>10} {'test acc':>9} {'test F1':>8}")
    for r in rows:
        acc, f1 = (f"{r[k]:.4f}" if r[k] is not None else "—" for k in ("test_accuracy", "test_f1_weighted"))
        name, mflop, rate = r["checkpoint"], r["mflop_per_window"], r["windows_per_s"]
        print(f"{name:48} {mflop:7.1f} {rate:10,.0f} {acc:>9} {f1:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
