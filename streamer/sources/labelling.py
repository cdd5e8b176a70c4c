"""Labels while recording: who is doing what right now, set from three places.

* MQTT: a device's label is the class name published to ``har/<device>/label`` (the topic of its
  samples with ``label`` for the last level); an empty payload clears it. :class:`LabelledMqttSource`
  reads both topics on one connection, in paho's one thread, so a sample carries the label that was
  in force when it arrived, in the order the broker delivered them.
* A guided protocol (:class:`RecordingProtocol`, a TOML file) sets every device's label itself, step
  by step, leaving ``margin_s`` seconds around each switch unlabelled.
* Keys in the recording dashboard: 1-9 choose a class by its number, 0 clears.

A device's own label (MQTT) wins over the one that the protocol or the keys give every device.
The names a label may take are a fixed list (``--classes``, a protocol's) or, without one, any name
a device publishes: one printable line of at most :data:`MAX_LABEL_CHARS` characters without a
comma (it becomes a CSV cell, a ``--classes`` entry and a TOML string later), :data:`MAX_NAMES`
names in all. A name refused (unknown, malformed, one too many) is one line (once per reason) and a
counter, never a traceback; so is a label for an id that breaks the device-id rule, and a label
forgotten at the board's bounds
(:data:`streamer.core.limits.MAX_WAITING_LABELS` devices that have sent nothing, ``MAX_DEVICES`` that send).
"""

from __future__ import annotations

import re
import threading
import tomllib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamer.core import limits
from streamer.core.mqtt_connection import MqttOptions, TopicPattern
from streamer.core.wire import valid_device_id
from streamer.sources.mqtt import MqttSource

CLASS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}")  # fits a CSV cell and a TOML key
MAX_STEPS = 1000
MAX_STEP_S = 3600.0
MAX_NAMES = 100  # distinct names: taken without a fixed list; unknown ones counted each under its own
MAX_LABEL_CHARS = 64  # as CLASS_NAME's
# why a label message is not used (LabelBoard.rejected), besides an unknown name
INVALID_DEVICE = "invalid device id"
TOO_LONG = "label too long"
NOT_ONE_CELL = "label with a comma or control character"
TOO_MANY = "label names beyond the limit"


def label_problem(name: str) -> str | None:
    """Why ``name`` (stripped, not empty) cannot be a label; None when it can."""
    if len(name) > MAX_LABEL_CHARS:
        return TOO_LONG
    if not name.isprintable() or "," in name:  # isprintable: no line breaks, tabs or other controls
        return NOT_ONE_CELL
    return None
FORGOTTEN_WAITING = "device sent no samples (oldest label forgotten)"
FORGOTTEN_SENDING = "device over the device limit (least recent label forgotten)"


class LabelBoard:
    """The label in force for each device (thread-safe: paho's thread, keys, the protocol's clock).

    Bounded whatever arrives: a label's device id follows the device-id rule (else refused and
    counted); labels of devices that have sent no samples yet wait in a list of at most
    ``max_waiting`` (the oldest forgotten), those of devices that send in one of at most
    ``max_devices`` (the least recently heard forgotten). Every label not used is counted in
    :attr:`rejected` by reason, and each reason is said once."""

    def __init__(self, classes: tuple[str, ...] | None, note: Callable[[str], None],
                 max_devices: int = limits.MAX_DEVICES,
                 max_waiting: int = limits.MAX_WAITING_LABELS) -> None:  # fmt: skip
        self.fixed = classes  # None: any well-formed name a device publishes, MAX_NAMES in all
        self.seen: dict[str, None] = {}  # without a fixed list: the names taken, in order first seen
        self.note = note
        self.everyone = ""  # from the protocol or the keys
        self.max_devices = max_devices
        self.max_waiting = max_waiting
        # device -> its label from MQTT: of devices that sent samples (least recently heard first),
        # and of those that have not yet (oldest first); a device is in one or neither
        self.own: OrderedDict[str, str] = OrderedDict()
        self.waiting: OrderedDict[str, str] = OrderedDict()
        self.rejected: Counter = Counter()  # reason -> label messages not used
        self._names = 0  # distinct unknown names counted under their own reason
        self._lock = threading.Lock()

    @property
    def classes(self) -> tuple[str, ...]:
        """The names a label may take now: the fixed list, else those seen so far (keys 1-9 pick them)."""
        if self.fixed is not None:
            return self.fixed
        with self._lock:
            return tuple(self.seen)

    def __len__(self) -> int:
        with self._lock:
            return len(self.own) + len(self.waiting)

    def current(self, device: str) -> str:
        """The label in force for ``device``, whose samples have just arrived (which is what moves
        its label, if it waited, among the labels of devices that send)."""
        said: list[str] = []
        with self._lock:
            name = self.own.get(device)
            if name is not None:
                self.own.move_to_end(device)
            else:
                name = self.waiting.pop(device, None)
                if name is not None:
                    self.own[device] = name
                    said += self._bound(self.own, self.max_devices, FORGOTTEN_SENDING)
            label = name or self.everyone
        self._say(said)
        return label

    def set_all(self, name: str) -> None:
        """The label of every device without one of its own ('' clears); names are checked by the caller."""
        with self._lock:
            self.everyone = name

    def set_device(self, device: str, payload: bytes) -> bool:
        """A label message of ``device``; False (counted, said once per reason) when its device id
        is not valid or it names no class."""
        if not valid_device_id(device):  # checked before it is kept or shown: it may be 10,000 characters
            shown = device[:40] + ("..." if len(device) > 40 else "")
            return self._reject(INVALID_DEVICE, f"a label message for {shown!r}, not a valid device id "
                                "(1-64 of A-Z a-z 0-9 _ . -): ignored, counted")  # fmt: skip
        if len(payload) > 4 * MAX_LABEL_CHARS:  # UTF-8 takes at most 4 bytes a character; not decoded
            return self._reject(TOO_LONG, f"a label from {device} longer than {MAX_LABEL_CHARS} characters: "
                                "ignored, counted")  # fmt: skip
        try:
            name = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            return self._reject("label not UTF-8", f"a label message of {device} is not UTF-8: ignored")
        if name and not self._allowed(device, name):
            return False
        said: list[str] = []
        with self._lock:
            if not name:
                self.own.pop(device, None)
                self.waiting.pop(device, None)
            elif device in self.own:
                self.own[device] = name
                self.own.move_to_end(device)
            else:
                self.waiting[device] = name
                self.waiting.move_to_end(device)
                said = self._bound(self.waiting, self.max_waiting, FORGOTTEN_WAITING)
        self._say(said)
        return True

    def _allowed(self, device: str, name: str) -> bool:
        """Whether ``name`` may be a label (counted and said once per reason when not); without a
        fixed list a new name is taken, while there is room, and said once."""
        shown = repr(name if len(name) <= 40 else name[:40] + "...")  # repr: a line break stays \n
        problem = label_problem(name)
        if problem == TOO_LONG:
            return self._reject(TOO_LONG, f"a label from {device} longer than {MAX_LABEL_CHARS} characters: "
                                "ignored, counted")  # fmt: skip
        if problem is not None:
            return self._reject(problem, f"label {shown} from {device} holds a comma, line break or other "
                                "control character: ignored, counted")  # fmt: skip
        if self.fixed is not None:
            if name in self.fixed:
                return True
            return self._reject(f"unknown label {shown}", f"unknown label {shown} from {device}: "
                                f"not one of {', '.join(self.fixed)}; ignored, counted")  # fmt: skip
        with self._lock:
            new = name not in self.seen
            room = len(self.seen) < MAX_NAMES
            if new and room:
                self.seen[name] = None
        if new and not room:
            return self._reject(TOO_MANY, f"label {shown} from {device}: already {MAX_NAMES} label names, "
                                "the most a recording takes; further names ignored, counted")  # fmt: skip
        if new:
            self.note(f"new label {shown} from {device}")
        return True

    def forget(self, device: str) -> None:
        """The device is no longer recorded: its label goes with it."""
        with self._lock:
            self.own.pop(device, None)
            self.waiting.pop(device, None)

    def _bound(self, labels: OrderedDict[str, str], limit: int, reason: str) -> list[str]:
        """Forget the oldest of ``labels`` beyond ``limit`` (with the lock held); the line to say."""
        said = []
        while len(labels) > max(limit, 0):
            labels.popitem(last=False)
            if not self.rejected[reason]:
                whose = "that have sent no samples" if reason == FORGOTTEN_WAITING else "that send"
                said.append(f"labels are kept for {limit} devices {whose}: the oldest is forgotten, counted")
            self.rejected[reason] += 1
        return said

    def _reject(self, reason: str, line: str) -> bool:
        with self._lock:
            if reason.startswith("unknown label") and reason not in self.rejected:
                if self._names >= MAX_NAMES:  # a flood of made-up names stays bounded
                    reason = "unknown label (others)"
                else:
                    self._names += 1
            first = reason not in self.rejected
            self.rejected[reason] += 1
        if first:
            self.note(line)
        return False

    def _say(self, lines: list[str]) -> None:
        for line in lines:  # outside the lock: a note may take its time
            self.note(line)


def label_topic(pattern: TopicPattern) -> TopicPattern | None:
    """``har/+/imu`` -> ``har/+/label``: the samples' topic with ``label`` for its last level
    (None when the device is the last level, which leaves nowhere to put it)."""
    if pattern.device_level == len(pattern.levels) - 1:
        return None
    return TopicPattern((*pattern.levels[:-1], "label"), pattern.device_level)


class LabelledMqttSource(MqttSource):
    """An MQTT source that also follows each device's label topic (see the module's docstring)."""

    def __init__(self, options: MqttOptions, channels: tuple[str, ...], board: LabelBoard,
                 max_devices: int = 10_000) -> None:  # fmt: skip
        super().__init__(options, channels, max_devices=max_devices)
        self.board = board
        self.labels = label_topic(options.topic)
        if self.labels is not None:  # subscribed with the samples' topic, again on every reconnect
            self.connection.subscriptions.append(self.labels.text)

    def handle(self, topic: str, payload: bytes, arrival: float | None = None) -> None:
        device = self.labels.device_of(topic) if self.labels is not None else None
        if device is None:
            super().handle(topic, payload, arrival)
        else:
            self.board.set_device(device, payload)


# -- guided sessions -----------------------------------------------------------------------------
class ProtocolError(ValueError):
    """A protocol file that cannot be run; one line naming the file and the place."""


@dataclass(frozen=True)
class Step:
    activity: str
    seconds: float
    say: str = ""  # what the wearer is told to do


@dataclass(frozen=True)
class Now:
    """Where a guided session is at a moment."""

    index: int  # the step, 0-based; len(steps) once it is over
    step: Step | None
    label: str  # '' in the margins around a switch
    left_s: float  # of this step
    done: float  # fraction of the whole session
    finished: bool
    step_done: float = 1.0  # fraction of this step: what the screen's bar shows


@dataclass(frozen=True)
class RecordingProtocol:
    """What the wearer does, in order, for how long; ``margin_s`` unlabelled around each switch.

    >>> p = RecordingProtocol("demo", (Step("WALKING", 10), Step("SITTING", 10)), margin_s=2)
    >>> [p.at(t).label for t in (1, 5, 9, 11, 15, 21)]
    ['', 'WALKING', '', '', 'SITTING', '']
    """

    name: str
    steps: tuple[Step, ...]
    margin_s: float = 2.0

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.activity for s in self.steps))

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def at(self, elapsed: float) -> Now:
        start = 0.0
        for index, step in enumerate(self.steps):
            if elapsed < start + step.seconds:
                into = elapsed - start
                inside = self.margin_s <= into < step.seconds - self.margin_s
                return Now(index, step, step.activity if inside else "", start + step.seconds - elapsed,
                           elapsed / self.seconds, False, into / step.seconds)  # fmt: skip
            start += step.seconds
        return Now(len(self.steps), None, "", 0.0, 1.0, True)

    @classmethod
    def load(cls, path: str | Path) -> RecordingProtocol:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ProtocolError(f"no protocol file at {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ProtocolError(f"{path}: not valid TOML: {error}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> RecordingProtocol:
        unknown = set(raw) - {"name", "margin_s", "step"}
        if unknown:
            first = sorted(unknown)[0]
            raise ProtocolError(f"{where}: unknown key {first!r}; expected name, margin_s, [[step]]")
        margin = raw.get("margin_s", 2.0)
        if not isinstance(margin, int | float) or isinstance(margin, bool) or not 0 <= margin <= 60:
            raise ProtocolError(f"{where}: margin_s must be a number of seconds from 0 to 60, got {margin!r}")
        steps = raw.get("step")
        if not isinstance(steps, list) or not steps or len(steps) > MAX_STEPS:
            raise ProtocolError(f"{where}: needs 1 to {MAX_STEPS} [[step]] tables (activity, seconds, say)")
        parsed = []
        for n, step in enumerate(steps, start=1):
            at = f"{where}: step {n}"
            if not isinstance(step, dict) or set(step) - {"activity", "seconds", "say"}:
                raise ProtocolError(f"{at}: a step has activity, seconds and optionally say")
            activity, seconds, say = step.get("activity"), step.get("seconds"), step.get("say", "")
            if not isinstance(activity, str) or not CLASS_NAME.fullmatch(activity):
                raise ProtocolError(f"{at}: activity must be a class name (letters, digits, '_'), "
                                    f"got {activity!r}")  # fmt: skip
            number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
            if not number or not 1 <= seconds <= MAX_STEP_S:
                raise ProtocolError(f"{at}: seconds must be from 1 to {MAX_STEP_S:g}, got {seconds!r}")
            if 2 * margin >= seconds:
                raise ProtocolError(f"{at}: {seconds:g} s leaves nothing labelled inside margins "
                                    f"of {margin:g} s")  # fmt: skip
            if not isinstance(say, str):
                raise ProtocolError(f"{at}: say must be text")
            parsed.append(Step(activity, float(seconds), say))
        name = raw.get("name", Path(where).stem)
        return cls(str(name), tuple(parsed), float(margin))
