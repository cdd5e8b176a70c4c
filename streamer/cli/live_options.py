"""The options every live command shares (``replay``, ``mqtt``, ``serial``, ``fleet``), in their
groups: recognition, output, history and device limits. Their ``dest`` names are the fields of
streamer/live.py's LiveOptions, which reads them once; their ranges are streamer/options.py's."""

from __future__ import annotations

import argparse
from pathlib import Path

from model.net.checkpoint_meta import DEFAULT_CHECKPOINT
from streamer.core import limits
from streamer.core.backends import BACKENDS, default_backend
from streamer.options import MAX_THREADS, count, duration, nonempty, number
from streamer.sinks.episodes import HOLD_S, MIN_CONFIDENCE


def add_backend_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--backend", choices=BACKENDS, default=default_backend(),
                   help="run the network with PyTorch, or its ONNX export (made once, kept beside the "
                   "checkpoint) with onnxruntime (default: %(default)s; onnx where torch is not installed)")


def add_live_options(p: argparse.ArgumentParser) -> None:
    """The options every live command reads into :class:`LiveOptions`, in two groups."""
    model = p.add_argument_group("recognition")
    model.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="FILE.pt",
                       help="trained model (default: the shipped model/weights/uci_har_3x3.pt)")
    model.add_argument("--hop", type=count(1, 100_000, unit="samples"), default=0,  # 0: LiveOptions' own
                       metavar="SAMPLES", help="samples between windows (default: a quarter window)")
    model.add_argument("--smooth", type=count(1, 1000), default=1, metavar="K",
                       help="average probabilities over the last K windows (default 1: none)")
    model.add_argument("--min-confidence", type=number(0, 1), default=0.0, metavar="FRACTION",
                       help="below this top probability (0 to 1) the label is 'uncertain' (default 0)")
    model.add_argument("--max-batch", type=count(1, 65_536), default=256, metavar="WINDOWS",
                       help="largest inference batch (default %(default)s)")
    model.add_argument("--max-wait-ms", type=number(0, 60_000, unit="ms"), default=20.0, metavar="MS",
                       help="how long a ready window waits for others to share its batch (default "
                       "%(default)g)")
    model.add_argument("--threads", type=count(0, MAX_THREADS), default=1, metavar="N",
                       help="intra-op threads for inference (default 1; 0: the library's default, all cores, "
                       "or with --shard K/N or --processes N this host's cores // N)")
    add_backend_option(model)
    model.add_argument("--calibration", action="append", metavar="DEVICE=WEARER.pt",
                       help="run DEVICE on its own calibrated model (harstream calibrate), everyone else on "
                       "--checkpoint; repeat it, or give a folder of DEVICE.pt files")
    out = p.add_argument_group("output")
    out.add_argument("--headless", action="store_true", help="no dashboard")
    out.add_argument("--jsonl", action="store_true", help="one JSON object per prediction on stdout")
    add_history_options(p)


def add_device_limits(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How many devices a recognizer serves and how long it keeps a silent one (streamer/core/limits.py)."""
    p.add_argument("--max-devices", type=count(1, 1_000_000), default=limits.MAX_DEVICES, metavar="N",
                   help="serve at most this many devices at once (default %(default)s)")
    p.add_argument("--idle-timeout", dest="idle_timeout_s", type=number(1, 30 * 86400, zero=True, unit="s"),
                   default=limits.IDLE_TIMEOUT_S, metavar="SECONDS",
                   help="forget a device silent for this many seconds (0 = never; default %(default)g)")


def add_history_options(p: argparse.ArgumentParser) -> None:
    """``--store``, ``--retain``, ``--events`` and the episodes' hysteresis, for every live command."""
    group = p.add_argument_group("history")
    group.add_argument("--store", metavar="PATH_OR_URL", type=nonempty("store"),
                       help="keep every prediction and episode: a SQLite file (history.db) or postgresql://...")
    group.add_argument("--retain", metavar="AGE", type=duration,
                       help="with --store: prune stored predictions older than this (30d, 12h; episodes "
                       "are kept; default: keep all)")
    group.add_argument("--events", action="store_true",
                       help="with --jsonl, also a line per episode start and end")
    group.add_argument("--episode-hold", dest="episode_hold_s", type=number(0, 86400, unit="s"),
                       default=HOLD_S, metavar="SECONDS",
                       help="seconds a new label must hold before an episode switches (default %(default)g)")
    group.add_argument("--episode-confidence", type=number(0, 1), default=MIN_CONFIDENCE,
                       metavar="FRACTION",
                       help="windows (0 to 1) less sure than this never switch an episode (default "
                       "%(default)g)")


def add_mqtt_output(group: argparse._ArgumentGroup) -> None:
    """``--publish`` and ``--ha-discovery``: what a recognizer sends back over MQTT (mqtt, fleet)."""
    group.add_argument("--publish", action="store_true", help="publish predictions to har/<device>/activity")
    group.add_argument("--ha-discovery", action="store_true",
                       help="announce each device to Home Assistant (implies --publish)")
