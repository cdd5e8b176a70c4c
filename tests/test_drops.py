"""Sources declare what they are, and every drop of a run is counted in one ledger: what the wire
refused, what the queue shed, what the scheduler dropped, what the model's output spoiled, per device
and in total, forgotten devices included; the dashboard reads it through the pipeline alone."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
from rich.console import Console

from model.data.signals import HAPT_CHANNELS
from model.net.checkpoint import load_checkpoint
from replay.sources import Device, ReplaySource
from streamer.core.backends import TorchBackend
from streamer.core.drops import RETIRED, Drops
from streamer.core.engine import NON_FINITE, Decider, InferenceEngine
from streamer.core.pipeline import Pipeline, PipelineStats
from streamer.core.scheduler import Scheduler
from streamer.core.source import Source, SourceBase
from streamer.core.types import Prediction, SampleBatch, Window
from streamer.sources.mqtt import MqttSource
from streamer.sources.serial_source import SerialSource
from streamer.tools.bench import Fleet
from streamer.ui.dashboard import Dashboard


def test_every_source_declares_what_the_pipeline_and_the_commands_use(short_recording) -> None:
    from live_fixtures import mqtt_options

    from model.data.recordings import read_csv_recording
    from model.data.signals import HAPT_ACTIVITIES

    recording = read_csv_recording(short_recording, HAPT_CHANNELS, HAPT_ACTIVITIES, 50.0)
    sources = {
        ReplaySource(Device("r", [recording])): False,
        MqttSource(mqtt_options("mqtt://127.0.0.1:1"), HAPT_CHANNELS): True,  # never started
        SerialSource("loop://", HAPT_CHANNELS): True,
        Fleet(1, 0.1): False,
    }
    declared = {name for name in Source.__annotations__} | {"bind", "run", "close", "summary", "released"}
    assert declared == {"name", "status", "live", "fatal", "bind", "run", "close", "summary", "released"}
    for source, live in sources.items():
        assert all(hasattr(source, name) for name in declared), type(source).__name__
        assert source.live is live and source.fatal is None and isinstance(source.status, str)
        assert source.summary() == {} and source.released() == []
        source.close()  # safe for every source, started or not
        source.close()


def test_what_a_source_refused_before_its_pipeline_existed_is_counted_there(tiny_checkpoint) -> None:
    from live_fixtures import mqtt_options

    from streamer.cli.main import build_parser
    from streamer.live import LiveOptions, assemble, open_checkpoint

    source = MqttSource(mqtt_options("mqtt://127.0.0.1:1"), HAPT_CHANNELS)
    source.handle("har/wrist/imu", b"garbage")  # e.g. while `harstream mqtt` still builds its pipeline
    assert source.drops.of("wrist") == {"unknown format": 1} and not source.defer_decoding
    args = build_parser().parse_args(["mqtt", "--broker", "mqtt://h", "--checkpoint", str(tiny_checkpoint)])
    pipeline = assemble(LiveOptions.from_args(args), open_checkpoint(tiny_checkpoint), [source]).pipeline
    assert source.drops is pipeline.drops and source.defer_decoding  # bound: the pipeline decodes
    assert pipeline.dropped("wrist") == {"unknown format": 1}  # moved over, not lost, not counted twice
    source.reject("wrist", "malformed JSON", 2)
    assert pipeline.dropped("wrist") == {"unknown format": 1, "malformed JSON": 2}
    assert pipeline.summary()["dropped"] == 3


class Refusing(SourceBase):
    """Device ``a`` sends three unusable messages and samples with holes; device ``b`` streams cleanly."""

    name, status = "two wearables", "sending"

    def run(self, emit, stop: threading.Event) -> None:
        self.reject("a", "malformed JSON", 3)
        t = np.arange(256) / 50.0
        for device in ("a", "b"):
            values = np.tile([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], (256, 1))
            if device == "a":
                values[[10, 20, 30, 40], 1] = np.nan
            emit(SampleBatch(device, t, values, HAPT_CHANNELS, arrival=time.monotonic(), rate_hz=50.0))


def test_one_ledger_holds_every_drop_of_a_device_from_the_wire_to_the_model_output(tiny_checkpoint) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    scheduler = Scheduler(checkpoint.preprocessing, checkpoint.window, 32, checkpoint.rate_hz)
    engine = InferenceEngine(TorchBackend(checkpoint.model))
    pipeline = Pipeline([Refusing()], scheduler, engine, Decider(checkpoint.classes))
    dashboard = Dashboard(pipeline, checkpoint.classes, "drops")
    for prediction in pipeline.run():
        dashboard.observe(prediction)
    window = Window("a", 1.0, np.zeros((checkpoint.window, 9), np.float32), time.monotonic(), None, 0, 0)
    assert pipeline.decider.decide([window], np.full((1, len(checkpoint.classes)), np.nan)) == []
    want = {"malformed JSON": 3, "non-finite value": 4, NON_FINITE: 1}
    assert pipeline.dropped("a") == want and pipeline.dropped("b") == {}
    assert pipeline.dropped() == want
    summary = pipeline.summary()
    assert summary["dropped"] == 8 and summary["dropped_by_reason"] == want
    assert dashboard.dropped("a") == 8 and dashboard.dropped("b") == 0
    console = Console(record=True, width=100)
    console.print(dashboard)
    assert "dropped 8" in console.export_text()  # a's panel and the footer say the same


def test_a_forgotten_device_keeps_its_drops_in_the_totals_not_under_its_name() -> None:
    from model.data.signals import PreprocessingSpec

    scheduler = Scheduler(PreprocessingSpec(), 128, 32, 50.0, idle_timeout_s=10.0)
    values = np.zeros((50, 6))
    values[5, 0] = np.inf
    scheduler.push(SampleBatch("a", np.arange(50) / 50.0, values, HAPT_CHANNELS, arrival=0.0, rate_hz=50.0))
    scheduler.drops.add("a", "malformed JSON")  # as a source bound to this scheduler's ledger would
    assert scheduler.devices["a"].counters.dropped == {"non-finite value": 1, "malformed JSON": 1}
    assert scheduler.evict_idle(100.0) == ["a"]
    assert scheduler.drops.of("a") == {} and scheduler.drops.of(RETIRED) == {"non-finite value": 1,
                                                                             "malformed JSON": 1}  # fmt: skip
    assert scheduler.totals().dropped == {"non-finite value": 1, "malformed JSON": 1}
    assert scheduler.retired.dropped is scheduler.drops.counter(RETIRED)  # one counter, not a copy


def test_the_ledger_counts_from_many_threads_at_once() -> None:
    drops = Drops()

    def count(device: str) -> None:
        for _ in range(10_000):
            drops.add(device, "shed", quiet=True)
            drops.add("shared", "shed", quiet=True)

    threads = [threading.Thread(target=count, args=(f"d{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert drops.of("shared") == {"shed": 40_000} and drops.total() == 80_000
    other = Drops()
    other.add("d0", "late")
    drops.absorb(other)
    assert drops.of("d0") == {"shed": 10_000, "late": 1} and other.total() == 0


class ReadApiOnly:
    """All the dashboard may read of a pipeline: no scheduler, no stats of sources, no ledger."""

    rate_hz = 50.0

    def __init__(self) -> None:
        self.stats = PipelineStats()
        self.sources: list = []

    def dropped(self, device: str | None = None) -> Counter:
        return Counter({"malformed JSON": 7}) if device in ("wrist", None) else Counter()

    def buffer_fill(self) -> float | None:
        return 0.5

    def signal(self, device: str) -> list[float]:
        return [1.0, 1.2, 0.9]

    def summary(self) -> dict:
        return {"dropped": 7, "gaps": 0}


def test_the_dashboard_reads_the_pipeline_s_small_api_alone() -> None:
    dashboard = Dashboard(ReadApiOnly(), ("SITTING", "WALKING"), "read api")  # type: ignore[arg-type]
    dashboard.observe(Prediction("wrist", 20.0, "WALKING", 0.9, {"SITTING": 0.1, "WALKING": 0.9}, None, 3.0,
                                 index=1000))  # fmt: skip
    console = Console(record=True, width=80)
    console.print(dashboard)
    text = console.export_text()
    assert "dropped 7" in text and "buffer 50%" in text and "WALKING" in text
