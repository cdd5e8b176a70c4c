"""The store's figure in ``harstream bench``: can it keep up with a fleet without slowing the pipeline?

A simulated fleet of ``devices`` at ``hop`` samples per window (50 Hz) makes ``devices * 50 / hop``
predictions a second (1,000 devices at hop 32: 1,563/s). They go, paced in 0.1 s bursts, through the
pipeline's real history sinks (:class:`~streamer.sinks.episodes.Episodes` and the store's queue) into a
SQLite file, while the writer thread commits every second. Reported: what the pipeline's thread
pays per prediction (the hot-path cost), the rows the writer committed per second, the deepest the
queue got, and whether every row was written by the end (``kept_up``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from streamer.core.types import Prediction
from streamer.sinks.episodes import Episodes
from streamer.sinks.store import Store, Target
from streamer.sinks.store_sink import StoreSink

LABELS = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")


def measure_store(devices: int = 1000, hop: int = 32, seconds: float = 20.0, rate_hz: float = 50.0,
                  target: str | None = None) -> dict:  # fmt: skip
    hop_s = hop / rate_hz
    per_second = devices / hop_s
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Target.parse(target or str(Path(folder) / "bench.db"))).start()
        episodes = Episodes(hop_s)
        episodes.sinks.append(StoreSink(store, hop_s))
        rng = np.random.default_rng(0)
        names = [f"dev-{k:04d}" for k in range(devices)]
        activity = rng.integers(0, len(LABELS), devices)
        probs = {label: 1.0 / len(LABELS) for label in LABELS}
        costs: list[float] = []
        deepest, sent = 0, 0
        started = time.perf_counter()
        t0 = time.time()
        tick = 0
        while time.perf_counter() - started < seconds:
            tick += 1
            due = int(per_second * 0.1 * tick) - sent
            switch = rng.random(devices) < 0.002  # a wearer changes activity now and then
            activity[switch] = rng.integers(0, len(LABELS), int(switch.sum()))
            burst = [Prediction(names[(sent + i) % devices], t0 + (sent + i) / per_second * 1.0,
                                LABELS[activity[(sent + i) % devices]], 0.9, probs, None, 0.0)
                     for i in range(due)]  # fmt: skip
            begun = time.perf_counter()
            for prediction in burst:
                episodes(prediction)
            costs.append((time.perf_counter() - begun) / max(len(burst), 1))
            sent += len(burst)
            deepest = max(deepest, store.queued)
            time.sleep(max(0.0, started + 0.1 * tick - time.perf_counter()))
        elapsed = time.perf_counter() - started
        behind_at_end = store.queued
        episodes.close()
        store.close(timeout=30)
        written = store.written
    return {
        "devices": devices,
        "hop": hop,
        "predictions_per_s_offered": round(sent / elapsed, 1),
        "rows_written_per_s": round(written / elapsed, 1),
        "hot_path_us_per_prediction_p50": round(float(np.percentile(costs, 50)) * 1e6, 2),
        "hot_path_us_per_prediction_p99": round(float(np.percentile(costs, 99)) * 1e6, 2),
        "deepest_queue_rows": deepest,
        "queued_at_end": behind_at_end,
        "commits": store.commits,
        "failures": store.failures,
        "kept_up": written == sent and store.failures == 0 and deepest <= 2.5 * per_second,
    }
