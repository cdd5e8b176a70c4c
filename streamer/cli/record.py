"""``harstream record``: live devices into labelled CSV recordings, guided or not.

Labels come from the devices' label topics (MQTT), from a guided ``--protocol`` that tells the
wearer what to do and labels the samples itself, or from keys 1-9 (0 clears) in the recording
dashboard (see :mod:`streamer.sources.labelling`). On a terminal the session is a rich panel (the step,
its countdown, a progress bar, what each device has recorded under which label); elsewhere (a
pipe, a test) it is one line per step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from model.data.signals import HAPT_CHANNELS
from streamer.cli.common import say, sigterm_as_interrupt
from streamer.cli.connect import add_mqtt_options, add_serial_options, mqtt_options, serial_source, start_mqtt
from streamer.errors import CliError
from streamer.sinks.recorder import CsvRecorder
from streamer.sources.labelling import (
    CLASS_NAME,
    LabelBoard,
    LabelledMqttSource,
    Now,
    ProtocolError,
    RecordingProtocol,
    Step,
)
from streamer.sources.serial_source import SerialSource


def session_classes(args: argparse.Namespace, protocol: RecordingProtocol | None) -> tuple[str, ...] | None:
    """The class names a label may take: ``--classes``, else the protocol's, else None: any name the
    user publishes (within :class:`LabelBoard`'s bounds), since their own activities are not HAPT's."""
    if args.classes:
        classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
        bad = next((c for c in classes if not CLASS_NAME.fullmatch(c)), None)
        if bad is not None or not classes or len(set(classes)) != len(classes):
            raise CliError(f"bad --classes {args.classes!r}: distinct names of letters, digits and '_'")
        if protocol is not None and set(protocol.classes) - set(classes):
            missing = ", ".join(sorted(set(protocol.classes) - set(classes)))
            raise CliError(f"the protocol's activities {missing} are not in --classes")
        return classes
    return protocol.classes if protocol is not None else None


def label_summary(recorder) -> str:
    """``labelled: Badminton 40, Running 10 samples; unlabelled 15``: what the recording holds."""
    totals: dict[str, int] = {}
    for (_, label), n in recorder.labelled.items():
        totals[label] = totals.get(label, 0) + n
    unlabelled = totals.pop("", 0)
    named = ", ".join(f"{label} {n:,}" for label, n in sorted(totals.items()))
    return f"labelled: {named or 'nothing'} samples; unlabelled {unlabelled:,}"


@contextlib.contextmanager
def keys() -> Iterator[callable]:
    """A function that returns the keys pressed since it was last called (stdin in cbreak mode,
    restored on the way out); on a stdin that is not a terminal it always returns ''."""
    if not sys.stdin.isatty():
        yield lambda: ""
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed() -> str:
        out = ""
        while select.select([fd], [], [], 0)[0]:
            out += os.read(fd, 32).decode(errors="ignore")
        return out

    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def cmd_record(args: argparse.Namespace) -> int:
    if (args.broker is None) == (args.port is None):
        raise CliError("record from one of --broker URL or --port DEV")
    try:
        protocol = RecordingProtocol.load(args.protocol) if args.protocol else None
    except ProtocolError as error:
        raise CliError(str(error)) from None
    classes = session_classes(args, protocol)
    sigterm_as_interrupt()
    board = LabelBoard(classes, note=say)
    recorder = CsvRecorder(args.out, HAPT_CHANNELS, note=say, labels=board.current)  # recovers a killed run's
    # no dashboard to retry behind, so a source that cannot start is an error (headless)
    labels_at = ""  # where labels arrive besides the keys: an MQTT source's label topic
    source: LabelledMqttSource | SerialSource
    if args.broker:
        options = mqtt_options(args)
        source = LabelledMqttSource(options, HAPT_CHANNELS, board)
        if source.labels is not None:
            labels_at = f", labels on {source.labels.text}"
        start_mqtt(options, HAPT_CHANNELS, connect_timeout=args.connect_timeout, headless=True, source=source)
    else:
        source = serial_source(args, HAPT_CHANNELS, headless=True)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(recorder.write, stop), daemon=True)
    thread.start()
    if labels_at and classes is None:
        labels_at += " (any name; --classes restricts)"
    say(f"recording {source.name} into {args.out}{labels_at}; Ctrl-C to stop")
    interrupted = False
    finished = False
    try:
        finished = session(args, source, thread, recorder, board, protocol)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        source.close()
        thread.join(2.0)
        for path in recorder.close():
            say(f"wrote {path}")
        if recorder.dropped:
            say("not recorded: " + ", ".join(f"{n} samples ({why})" for why, n in recorder.dropped.items()))
        if recorder.samples:
            say(label_summary(recorder))
        if board.rejected:
            say("label messages ignored: " + ", ".join(f"{n} ({why})" for why, n in board.rejected.items()))
    if source.fatal:  # refused for good or taken over: said in one line already
        return 1
    return 0 if interrupted or finished or not thread.is_alive() else 1


def session(args, source, thread, recorder, board: LabelBoard, protocol: RecordingProtocol | None) -> bool:
    """Run until Ctrl-C, the source's end, or the protocol's; True when the protocol finished.

    A protocol's clock starts with the first sample of the first device (the recorder notes when):
    before that there is nobody to follow the steps, and the first step would pass unrecorded."""
    dashboard = sys.stderr.isatty() and not args.headless
    shown_step = -1
    if protocol is not None and not dashboard:
        say(f"protocol {protocol.name!r}: waiting for the first sample of a device; step 1 starts with it")
    with keys() as pressed, (live_panel() if dashboard else contextlib.nullcontext()) as live:
        while thread.is_alive():
            time.sleep(0.1)
            recorder.flush()  # at least once a second, also when nothing new arrived
            typed = pressed()
            now = None
            if protocol is not None and recorder.first_sample_at is not None:
                now = protocol.at(time.monotonic() - recorder.first_sample_at)
                board.set_all(now.label)
                if now.index != shown_step and not dashboard:
                    shown_step = now.index
                    say(step_line(protocol, now))
                if now.finished:
                    return True
            elif protocol is None:  # keys label only where no protocol does
                for key in typed:
                    if key == "0":
                        board.set_all("")
                    elif key.isdigit() and 0 < int(key) <= len(board.classes):
                        board.set_all(board.classes[int(key) - 1])
            if live is not None:
                live.update(panel(source, recorder, board, protocol, now))
    return False


def describe(step: Step) -> str:
    return f"{step.activity} — {step.seconds:g} s" + (f": {step.say}" if step.say else "")


def step_line(protocol: RecordingProtocol, now: Now) -> str:
    if now.finished:
        return f"protocol {protocol.name!r} done"
    following = protocol.steps[now.index + 1] if now.index + 1 < len(protocol.steps) else None
    return (f"step {now.index + 1}/{len(protocol.steps)}: {describe(now.step)}"
            f" · next: {following.activity if following else 'done'}")  # fmt: skip


@contextlib.contextmanager
def live_panel():
    from rich.console import Console
    from rich.live import Live

    with Live(console=Console(stderr=True), refresh_per_second=8, transient=False) as live:
        yield live


def guided(protocol: RecordingProtocol, now: Now | None) -> list:
    """The protocol's part of the screen: the step, a bar of the step's progress on a line with its
    label, what comes next; before the first sample, that the clock waits for one."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    steps = len(protocol.steps)
    if now is None:
        return [Text("waiting: no device has sent a sample yet", style="bold yellow"),
                Text("the protocol's clock starts with the first sample", style="dim"),
                Text(f"first, step 1/{steps}: {describe(protocol.steps[0])}")]  # fmt: skip
    if now.finished:
        return [Text(f"protocol {protocol.name!r} done", style="bold")]
    parts = [Text(f"{now.step.activity} — {now.step.seconds:g} s", style="bold")]
    if now.step.say:
        parts.append(Text(now.step.say))
    # a grid, not the bar alone: a bare ProgressBar ends no line, so what follows it was glued on
    bar = Table.grid(padding=(0, 1), expand=True)
    bar.add_column(no_wrap=True)
    bar.add_column(ratio=1)
    bar.add_column(no_wrap=True, justify="right")
    bar.add_row(f"step {now.index + 1}/{steps}", ProgressBar(total=1.0, completed=now.step_done),
                f"{100 * now.step_done:3.0f} % · {now.left_s:.0f} s left")  # fmt: skip
    parts.append(bar)
    state = "recording as " + now.label if now.label else "get ready (not labelled)"
    elapsed = now.done * protocol.seconds
    parts.append(Text(f"{state} · session {elapsed:.0f} of {protocol.seconds:g} s"))
    following = protocol.steps[now.index + 1] if now.index + 1 < steps else None
    parts.append(Text("next: " + (describe(following) if following else "done")))
    return parts


def panel(source, recorder, board: LabelBoard, protocol: RecordingProtocol | None, now: Now | None):
    """The recording screen: the guided session's steps (or the keys that label), then each device."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    if protocol is not None:
        parts = guided(protocol, now)
    else:
        keys_help = "  ".join(f"{i}={c}" for i, c in enumerate(board.classes[:9], start=1))
        parts = [Text(f"label for every device: {board.everyone or '(none)'}", style="bold"),
                 Text(f"keys: {keys_help or '(no label names yet)'}  0=clear", style="dim")]  # fmt: skip
    table = Table("device", "samples", "label now", "labelled (samples)", box=None)
    for device, n in sorted(recorder.samples.items()):
        by_label = {lb: k for (d, lb), k in recorder.labelled.items() if d == device and lb}
        shown = ", ".join(f"{lb} {k}" for lb, k in by_label.items()) or "-"
        table.add_row(device, f"{n:,}", board.current(device) or "-", shown)
    parts.append(table)
    dropped = sum(recorder.dropped.values()) + sum(board.rejected.values())
    return Panel(Group(*parts), title=f"harstream record · {source.name} · {source.status}",
                 subtitle=f"ignored {dropped} · Ctrl-C to stop")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    # its help, description and examples: streamer/cli/table.py
    p = sub.add_parser("record")
    add_mqtt_options(p.add_argument_group("MQTT source (with --broker)"), required=False)
    add_serial_options(p.add_argument_group("serial source (with --port)"), required=False)
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                     help="folder for the recordings (one file per device)")
    labels = p.add_argument_group("labels (a device's own: publish a class name to har/<device>/label)")
    labels.add_argument("--protocol", metavar="FILE.toml", help="a guided session that labels itself, e.g. "
                        "configs/protocols/hapt_six.toml")
    labels.add_argument("--classes", metavar="NAMES",
                        help="the class names labels may take, comma-separated (default: the protocol's, "
                        "else any name a device publishes); keys 1-9 choose one in the "
                        "dashboard, 0 clears")
    labels.add_argument("--headless", action="store_true", help="no dashboard: one line per step")
    p.set_defaults(run=cmd_record)
