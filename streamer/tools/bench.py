"""``harstream bench``: inference and pipeline speed, measured side by side in one run.

The machine is shared and noisy, so every figure is measured in the same process minutes apart,
and the ratios to the baseline (the plain eager model, one window at a time) are what to compare.

FLOPs per window count the multiply-adds of the network (each dense layer, each LSTM direction's
input and recurrent products, the classifier), 2 FLOPs per multiply-add. The reference rate is a
large fp32 matrix product (torch.mm) timed in the same run.

The same network exported to ONNX and run by onnxruntime (same thread count) is timed the same way,
side by side (its graph ends in the softmax, which the eager timing leaves out); its figures carry
the prefix ``onnx_``, its batches the name ``onnx/``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from model.net.checkpoint import Checkpoint
from model.net.network import ResidualBiLSTM
from streamer.core.backends import OnnxBackend, TorchBackend, make_backend
from streamer.core.engine import Backend
from streamer.core.source import SourceBase


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


def quiet(stage: str) -> None:
    """The default progress callback: says nothing."""


@torch.inference_mode()
def inference_figures(checkpoint: Checkpoint, seconds: float, batches: tuple[int, ...],
                      progress: Callable[[str], None] = quiet) -> dict:  # fmt: skip
    plain = checkpoint.model.eval()
    steps, n_in = checkpoint.window, plain.config.n_inputs
    flops = flops_per_window(plain, steps)
    progress("the reference: torch.mm's FLOP rate")
    rate = matmul_rate(min(seconds, 1.0))
    out: dict = {"flops_per_window": flops, "matmul_flop_per_s": rate, "batches": {}}

    one = torch.randn(1, steps, n_in)
    progress("the baseline: eager PyTorch, one window at a time")
    baseline = time_calls(lambda: plain(one), seconds)
    out["baseline_windows_per_s"] = 1.0 / float(np.mean(baseline))
    out["baseline_p50_ms"] = float(np.median(baseline) * 1000)
    time_batches(out, "eager", plain, steps, n_in, seconds, batches, progress)
    out.update(path_figures(out, "eager", "", flops, rate))
    try:
        progress("onnx: loading (or first making) the checkpoint's export")
        onnx = OnnxBackend.for_checkpoint(checkpoint.path, threads=torch.get_num_threads())
    except ImportError as error:
        out["onnx_error"] = str(error)
        return out
    onnx_fn = lambda x: onnx.probabilities(x.numpy())  # noqa: E731 - torch windows in, as the eager path
    time_batches(out, "onnx", onnx_fn, steps, n_in, seconds, batches, progress)
    out.update(path_figures(out, "onnx", "onnx_", flops, rate))
    return out


def time_batches(out: dict, name: str, fn: Callable, steps: int, n_in: int, seconds: float,
                 batches: tuple[int, ...], progress: Callable[[str], None] = quiet) -> None:  # fmt: skip
    """Time ``fn`` on random windows at each batch size, into ``out["batches"]["name/batch"]``."""
    for batch in batches:
        progress(f"inference: {name} at batch {batch}")
        x = torch.randn(batch, steps, n_in)
        t = time_calls(lambda x=x: fn(x), seconds / len(batches))
        out["batches"][f"{name}/{batch}"] = {
            "windows_per_s": batch / float(np.mean(t)),
            "p50_ms": float(np.median(t) * 1000),
            "p99_ms": float(np.percentile(t, 99) * 1000),
        }


def path_figures(out: dict, name: str, prefix: str, flops: int, rate: float) -> dict:
    """Batch-1 latency, best batch, FLOP efficiency and ratios to the baseline for one path,
    under keys that start with ``prefix``."""
    rows = {k: v for k, v in out["batches"].items() if k.startswith(f"{name}/")}
    best_key = max(rows, key=lambda k: rows[k]["windows_per_s"])
    batch1_key = f"{name}/1"
    figures = {
        "batch1_path": batch1_key,
        "batch1_p50_ms": rows[batch1_key]["p50_ms"],
        "batch1_p99_ms": rows[batch1_key]["p99_ms"],
        "best_batch": best_key,
        "best_batch_windows_per_s": rows[best_key]["windows_per_s"],
        "flop_efficiency": rows[best_key]["windows_per_s"] * flops / rate,
        "speedup_batch1_vs_baseline": out["baseline_p50_ms"] / rows[batch1_key]["p50_ms"],
        "speedup_best_vs_baseline": rows[best_key]["windows_per_s"] / out["baseline_windows_per_s"],
    }
    return {prefix + k: v for k, v in figures.items()}


class Fleet(SourceBase):
    """``n`` simulated wearables at ``rate_hz`` sending a burst every ``tick_s``, in one thread.

    Each device plays real HAPT samples from its own offset. Every tick's bursts of all devices
    are handed over as one :class:`FleetBatch` (as a gateway would), so the scheduler can check
    and filter them together. A batch's arrival is the moment its last sample was due, so a
    pipeline that falls behind shows it as latency.

    Wearables are switched on at different moments, so their windows close at different moments:
    the starts are spread evenly over the ticks that ``spread_samples`` take (the benchmark spreads
    them over one hop). With no spread every device closes its windows on the same tick, and p99
    latency is the time to infer all of their windows at once.
    """

    def __init__(self, n: int, seconds: float, rate_hz: float = 50.0, tick_s: float = 0.1,
                 spread_samples: int = 0) -> None:  # fmt: skip
        from model.data.recordings import load_hapt

        super().__init__()
        self.name = f"fleet of {n}"
        self.status = "waiting"
        self.n, self.seconds, self.rate_hz, self.tick_s = n, seconds, rate_hz, tick_s
        self.per_tick = round(rate_hz * tick_s)
        self.ticks = int(seconds / tick_s)
        spread_ticks = max(1, math.ceil(spread_samples / self.per_tick))
        self.starts = np.arange(n) * spread_ticks // n  # the tick each device starts on
        recording = load_hapt((2,))[0]
        self.values = recording.values
        self.channels = recording.channels
        self.late_s = 0.0  # how far behind schedule the fleet fell, at worst

    def expected_windows(self, window: int, hop: int) -> int:
        samples = (self.ticks - self.starts) * self.per_tick
        return int(np.maximum(0, (samples - window) // hop + 1).sum())

    def run(self, emit, stop) -> None:
        from streamer.core.types import FleetBatch

        per_tick = self.per_tick
        start = time.monotonic()
        n_values = len(self.values) - per_tick
        devices = np.array([f"dev{d:05d}" for d in range(self.n)])
        offsets = np.arange(self.n) * 997
        self.status = "sending"
        for k in range(self.ticks):
            due = start + (k + 1) * self.tick_s
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            self.late_s = max(self.late_s, -delay)
            on = self.starts <= k
            sent = (k - self.starts[on])[:, None] * per_tick + np.arange(per_tick)  # samples so far
            values = self.values[(offsets[on, None] + sent) % n_values]  # (devices, per_tick, channels)
            emit(FleetBatch(tuple(devices[on]), sent / self.rate_hz, values, self.channels, arrival=due,
                            rate_hz=self.rate_hz))  # fmt: skip
        self.status = "finished"


def fastest_backend() -> str:
    """The backend the benchmark measures end to end: onnx where onnxruntime is installed (faster at
    every batch size here), else torch; not the live default (streamer/core/backends.py: torch first)."""
    import importlib.util

    return "onnx" if importlib.util.find_spec("onnxruntime") else "torch"


def end_to_end(checkpoint: Checkpoint, n: int, seconds: float, hop: int = 32,
               backend: Backend | None = None) -> dict:
    """Run ``n`` simulated devices through the real pipeline for ``seconds`` on ``backend`` (by
    default the torch model); report what held."""
    import resource

    from streamer.core.engine import Decider, InferenceEngine
    from streamer.core.limits import MAX_DEVICES
    from streamer.core.pipeline import Pipeline
    from streamer.core.scheduler import Scheduler

    fleet = Fleet(n, seconds, spread_samples=hop)
    scheduler = Scheduler(checkpoint.preprocessing, checkpoint.window, hop, checkpoint.rate_hz,
                          max_devices=max(n, MAX_DEVICES))  # the fleet under test, whatever its size
    engine = InferenceEngine(backend or TorchBackend(checkpoint.model), max_batch=256)
    pipeline = Pipeline([fleet], scheduler, engine, Decider(checkpoint.classes), max_wait_s=0.05,
                        queue_size=100_000)
    cpu0, wall0 = time.process_time(), time.monotonic()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    windows = sum(1 for _ in pipeline.run())
    wall = time.monotonic() - wall0
    summary = pipeline.summary()
    expected = fleet.expected_windows(checkpoint.window, hop)
    p99 = summary["latency_p99_ms"] or float("inf")
    return {
        "devices": n,
        "seconds": seconds,
        "windows": windows,
        "windows_expected": expected,
        "p50_ms": summary["latency_p50_ms"],
        "p99_ms": p99,
        "dropped": summary["dropped"],
        "late_s": fleet.late_s,
        "cpu_percent": 100 * (time.process_time() - cpu0) / wall,
        # what bench --fleet reports as recognizer_cpu_ms_per_device_s: CPU per device per second of traffic
        "cpu_ms_per_device_s": round(1000 * (time.process_time() - cpu0) / (n * seconds), 3),
        "rss_growth_kib_per_device": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / n,
        "held": p99 <= 250 and summary["dropped"] == 0 and windows >= expected and fleet.late_s < 0.25,
    }


def scheduling_figures(checkpoint: Checkpoint, devices: int = 1000, rounds: int = 16, take: int = 40) -> dict:
    """CPU per message to schedule ``devices`` wearables' binary messages of 25 real samples, side by
    side: pushed one by one (``Scheduler.push``) and as the live loop takes them, ``take`` at a time
    (``Scheduler.push_many``: stacked, every device's filters in one call). Decoding is left out; the
    first rounds too (streams starting)."""
    from model.data.recordings import load_hapt
    from streamer.core.scheduler import Scheduler
    from streamer.core.wire import decode, encode_binary

    values = load_hapt((2,))[0].values  # HAPT_CHANNELS, as encode_binary wants them
    per = 25
    channels = tuple(checkpoint.input_channels)

    def message(r: int, d: int) -> bytes:  # device d's r-th message, from its own place in the recording
        start = (r * per + 7 * d) % 5000
        return encode_binary(r * per / 50 + d / devices, 50.0, values[start : start + per])

    messages = [[decode(message(r, d), f"d{d}", channels, 0.0) for d in range(devices)]
                for r in range(rounds)]  # fmt: skip
    out = {}
    for name in ("one_by_one", "together"):
        scheduler = Scheduler(checkpoint.preprocessing, checkpoint.window, 32, checkpoint.rate_hz,
                              max_devices=2 * devices)  # fmt: skip
        spent = 0.0
        for r, batches in enumerate(messages):
            t0 = time.process_time()
            if name == "together":
                for k in range(0, devices, take):
                    scheduler.push_many(batches[k : k + take])
            else:
                for batch in batches:
                    scheduler.push(batch)
            spent += (time.process_time() - t0) if r >= 4 else 0.0
        out[f"{name}_us_per_message"] = round(1e6 * spent / ((rounds - 4) * devices), 1)
    out["ratio"] = round(out["one_by_one_us_per_message"] / out["together_us_per_message"], 2)
    return out


def largest_fleet(checkpoint: Checkpoint, seconds: float, sizes: tuple[int, ...],
                  backend: Backend | None = None,
                  progress: Callable[[str], None] = quiet) -> tuple[int, list[dict]]:  # fmt: skip
    """Step the fleet size up until a run fails to hold; the largest that held."""
    runs, best = [], 0
    for n in sizes:
        progress(f"end to end: {n} simulated devices for {seconds:g} s")
        run = end_to_end(checkpoint, n, seconds, backend=backend)
        runs.append(run)
        if not run["held"]:
            break
        best = n
    return best, runs


def run_bench(checkpoint: Checkpoint, quick: bool, backend: str | None = None,
              progress: Callable[[str], None] = quiet) -> dict:  # fmt: skip
    """Everything ``harstream bench`` reports; the end-to-end runs use ``backend`` (torch or onnx,
    by default :func:`fastest_backend`) with torch's thread count. ``progress`` is told each stage
    as it starts (the whole takes minutes)."""
    seconds = 3.0 if quick else 8.0
    out = inference_figures(checkpoint, seconds, (1, 16, 64, 256), progress)
    e2e_seconds = 10.0 if quick else 60.0
    sizes = (25, 50, 100, 200) if quick else (50, 100, 200, 300, 400, 500, 700, 1000, 1500)
    progress("scheduling: 1,000 devices' messages one by one and together")
    out["scheduling"] = scheduling_figures(checkpoint)
    out["e2e_backend"] = backend = backend or fastest_backend()
    engine_backend = make_backend(backend, checkpoint.path, threads=torch.get_num_threads())
    best, runs = largest_fleet(checkpoint, e2e_seconds, sizes, engine_backend, progress)
    out["e2e_max_devices"] = best
    out["e2e_runs"] = runs
    held = [r for r in runs if r["devices"] == best]
    out["e2e_p99_ms"] = held[0]["p99_ms"] if held else None
    try:
        from streamer.tools.bench_mqtt import measure_mqtt_ingestion

        mqtt_seconds = 5.0 if quick else 15.0
        mqtt = {}
        for fmt in ("batch", "binary"):
            progress(f"MQTT ingestion: {fmt} messages for {mqtt_seconds:g} s")
            mqtt[fmt] = measure_mqtt_ingestion(fmt, seconds=mqtt_seconds)
        out["mqtt"] = mqtt
        out["mqtt_samples_per_s"] = max(m["samples_per_s"] for m in mqtt.values())
    except (ImportError, FileNotFoundError, OSError) as error:
        out["mqtt"] = {"error": str(error)}
        out["mqtt_samples_per_s"] = None
    from streamer.tools.bench_store import measure_store

    progress("the history store: 1,000 devices at hop 32 into SQLite")
    out["store"] = store = measure_store(devices=1000, hop=32, seconds=5.0 if quick else 20.0)
    out["store_rows_per_s"] = store["rows_written_per_s"] if store["kept_up"] else None
    out["store_hot_path_us"] = store["hot_path_us_per_prediction_p99"]
    out["torch_threads"] = torch.get_num_threads()
    return out
