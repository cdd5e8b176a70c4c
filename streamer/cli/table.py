"""The ``harstream`` commands in one ordered table: each command's group, name, one-line summary,
description and examples. The table drives both the parser (:class:`CommandsAction` gives each
subcommand its help, description and epilog from it; a command module's ``sub.add_parser("name")``
passes none of them) and ``harstream --help``'s grouped list (:func:`command_list`), so nothing is
written twice. ``tests/test_help.py`` parses every example as written.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from dataclasses import dataclass

GROUPS = ("live", "your own wearable", "data and models", "tools")
NAME_WIDTH = 11  # the longest name, init-config: the summaries start in one column


@dataclass(frozen=True)
class Command:
    group: str
    name: str
    summary: str  # one line, in `harstream --help`
    description: str  # what it does, one or two sentences, at the top of `harstream NAME --help`
    examples: tuple[tuple[str, str], ...]  # (command line, what it does), under it

    def epilog(self) -> str:
        lines = ["examples:"]
        for line, says in self.examples:
            lines.append(f"  {line}")
            lines += textwrap.wrap(says, 92, initial_indent=" " * 6, subsequent_indent=" " * 6)
        return "\n".join(lines)


COMMANDS: tuple[Command, ...] = (
    Command("live", "replay", "play recordings as live devices through the model (no hardware needed)",
            "Play recorded sensor data (HAPT, UCI HAR, OPPORTUNITY or your own CSV) as if live devices sent "
            "it, through the same pipeline as mqtt and serial, with the true labels beside the predictions.",
            (("harstream replay", "the live dashboard on HAPT's held-out test subject 2, at real time"),
             ("harstream replay hapt:2,4,9 --speed 0 --headless --jsonl",
              "three subjects as fast as possible: one JSON line per prediction"),
             ("harstream replay hapt:2 --speed 0 --headless --store history.db",
              "keep every prediction and episode, for harstream history"))),
    Command("live", "mqtt", "recognize the activities of wearables that publish to an MQTT broker",
            "Subscribe to the wearables' samples on an MQTT broker (one device per topic har/DEVICE/imu) "
            "and recognize each device's activity as the samples arrive; --publish sends the predictions "
            "back to the broker.",
            (("harstream mqtt --broker mqtt://localhost --publish",
              "the dashboard, and each prediction published to har/DEVICE/activity"),
             ("harstream mqtt --broker mqtt://localhost --headless --jsonl --store history.db",
              "no dashboard: one JSON line per prediction, every one kept in history.db"),
             ("harstream mqtt --broker mqtt://localhost --shard 0/2 --headless",
              "the first of two workers, each serving half of the devices"),
             ("harstream mqtt --broker mqtt://localhost --processes 4 --headless --jsonl",
              "four recognizer processes share this host's cores: one connection to the broker, each "
              "device served by one of them"))),
    Command("live", "serial", "recognize the activity of a wearable on a serial port",
            "Read CSV lines from a wearable on a serial port (USB or Bluetooth SPP) and recognize its "
            "activity as they arrive.",
            (("harstream serial --port /dev/ttyUSB0 --hz 50",
              "a device that sends 50 lines a second without a time column"),
             ("harstream serial --port /dev/ttyACM0 --columns acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z --hz 50",
              "a device that sends no header line: name its columns"))),
    Command("live", "fleet", "one worker of a recognizer fleet that shares devices through RabbitMQ",
            "Consume the fleet's partition queues on RabbitMQ (devices publish MQTT to its MQTT plugin); "
            "workers share the partitions and take over from each other.",
            (("harstream fleet --amqp amqp://guest:guest@localhost/ --partitions 8",
              "a fleet of one worker, on a local RabbitMQ with the MQTT plugin"),
             ("harstream fleet --amqp amqp://harstream:S3cret@rabbit/har --partitions 8 --worker 1/2 "
              "--publish",
              "the second of two workers (run 0/2 on another host), publishing predictions over MQTT"))),
    Command("your own wearable", "check", "listen to one wearable and say whether the model fits it",
            "Listen to one wearable for a few seconds and compare what it sends with what the model "
            "expects (rate, channels, units, orientation), with the fix for each mismatch.",
            (("harstream check --broker mqtt://localhost --device wrist-01",
              "the device that publishes to har/wrist-01/imu"),
             ("harstream check --port /dev/ttyUSB0 --seconds 20 --json",
              "a serial device, 20 seconds, the report as one JSON object"))),
    Command("your own wearable", "record", "write what live devices send into labelled CSV recordings",
            "Record from one source, an MQTT broker (--broker) or a serial port (--port), into one CSV file "
            "per device, labelled by a guided session (--protocol), by keys 1-9, or by the label the device "
            "publishes.",
            (("harstream record --broker mqtt://localhost --out recordings/wrist "
              "--protocol configs/protocols/hapt_six.toml",
              "a guided session: each step shown, counted down and labelled"),
             ("harstream record --port /dev/ttyUSB0 --hz 50 --out recordings/wrist "
              "--classes Running,Walking",
              "a serial device, labelled with your own activities (keys 1-2 in the dashboard)"))),
    Command("your own wearable", "init-config",
            "write a training config for a folder of labelled CSV recordings",
            "Read a folder of labelled CSV recordings (harstream record's) and write a commented training "
            "config for them: channels, rate, classes, windows and a subject split; then python train.py "
            "--config trains on it.",
            (("harstream init-config recordings/wrist --out configs/wrist.toml",
              "then: python train.py --config configs/wrist.toml"),
             ("harstream init-config recordings/gestures --out configs/gestures.toml --window 24",
              "short windows, for short gestures or short recordings"))),
    Command("your own wearable", "calibrate", "adapt a model to one wearer from labelled CSV recordings",
            "Adapt a trained model to one wearer (the sensor's orientation, and the last layer) from a few "
            "labelled recordings of that wearer, in about a second; the live commands run it with "
            "--calibration DEVICE=WEARER.pt.",
            (("harstream calibrate --recording recordings/me/a.csv --out me.pt",
              "the shipped model, adapted to the wearer of recordings/me/a.csv"),
             ("harstream calibrate --recording a.csv --recording b.csv --seconds 30 --out me.pt --force",
              "two recordings, up to 30 s of each activity, replacing me.pt"))),
    Command("data and models", "evaluate", "score a checkpoint on a data split",
            "Rebuild a checkpoint's data from the training config it records and score it on one split: "
            "per-class figures, the confusion matrix, accuracy and F1.",
            (("harstream evaluate", "the shipped model on its test split"),
             ("harstream evaluate --checkpoint model/weights/uci_har_2x2_fleet.pt --json",
              "another model, the figures as one JSON object"))),
    Command("data and models", "export", "write a checkpoint as a self-describing ONNX model",
            "Write a checkpoint as an ONNX model that carries its own metadata (classes, channels, rate, "
            "window), which --backend onnx runs with onnxruntime and without PyTorch.",
            (("harstream export", "the shipped model, beside it as model/weights/uci_har_3x3.onnx"),
             ("harstream export --checkpoint me.pt --out me.onnx",
              "a model of your own, to a file you name"))),
    Command("data and models", "download", "fetch, check and extract a public dataset (needs a network)",
            "Fetch a public dataset's archive, check it (every member's CRC, and the file that marks the "
            "dataset) and extract it; then it says the command that trains on it.",
            (("harstream download uci-har", "UCI HAR, into data/"),
             ("harstream download opportunity --to /tmp/datasets", "OPPORTUNITY, into a folder you name"))),
    Command("data and models", "history", "time spent in each activity and the episodes, from a --store",
            "Read what a live command kept with --store: the time each device spent in each activity and "
            "its episodes, for a time span; or how well the episodes match the truth of labelled replays.",
            (("harstream history --store history.db --since today", "today's activities and episodes"),
             ("harstream history --store history.db --device wrist-01 --since 2h --json",
              "one device's last two hours, as one JSON object"),
             ("harstream history --store history.db --plot today.png",
              "one timeline per device (needs matplotlib)"))),
    Command("data and models", "web", "a read-only web page of the fleet: every wearer live, today, health",
            "Serve a web page that shows every device of a --store, live through the topics that --publish "
            "sends (with --broker): the fleet, each wearer's day and the last 7 days, each device's health, "
            "and the JSON API the page uses. Read-only; on 127.0.0.1 unless --host and --token say so.",
            (("harstream web --store history.db --broker mqtt://localhost", "the page at http://127.0.0.1:8080/"),
             ("harstream web --store history.db --host 0.0.0.0 --token SECRET",
              "for other machines too: open http://HOST:8080/?token=SECRET"))),
    Command("tools", "publish", "publish a recording over MQTT as a wearable would",
            "Play a recording into an MQTT broker as a wearable would send it: the quickest way to see "
            "harstream mqtt predict without a device.",
            (("harstream publish --broker mqtt://localhost",
              "HAPT's subject 2 as a device, at real time: harstream mqtt shows its predictions"),
             ("harstream publish hapt:9 --broker mqtt://localhost --speed 5 --format json",
              "another subject, five times real time, a message per sample"))),
    Command("tools", "bench", "measure inference and pipeline speed, side by side",
            "Measure inference (eager PyTorch, batched, ONNX) and the end-to-end pipeline with simulated "
            "devices on this machine, side by side; --fleet measures recognizer processes through real "
            "brokers instead.",
            (("harstream bench --quick", "seconds instead of minutes"),
             ("harstream bench --fleet --fleet-sizes 100,200 --fleet-seconds 10 --json",
              "mosquitto and RabbitMQ fleets of 100 and 200 devices, as JSON"))),
    Command("tools", "soak", "hours of good and hostile devices' traffic through the live path, in minutes",
            "Send hours of traffic from well-behaved and hostile devices, and floods of new device ids, "
            "through the live path on a simulated clock, in minutes; --faults then breaks the services "
            "(PostgreSQL, RabbitMQ) under a real fleet.",
            (("harstream soak --hours 24 --json", "a simulated day, the counters as one JSON object"),
             ("harstream soak --hours 0.1 --faults", "a short soak, then the services' faults (needs "
              "PostgreSQL and RabbitMQ installed)"))),
)  # fmt: skip
BY_NAME = {command.name: command for command in COMMANDS}
NOTES = {  # a line under a group's commands
    "data and models": "(training is a script, not a command: python train.py --config configs/NAME.toml)",
}


def command_list(width: int) -> str:
    """The commands under their group headings, each with its summary wrapped to ``width``."""
    indent = " " * (2 + NAME_WIDTH + 2)
    width = max(width, 40)
    blocks = []
    for group in GROUPS:
        lines = [f"{group}:"]
        for command in (c for c in COMMANDS if c.group == group):
            first = f"  {command.name:<{NAME_WIDTH}}  "
            lines += textwrap.wrap(command.summary, width, initial_indent=first, subsequent_indent=indent)
        if group in NOTES:
            lines += textwrap.wrap(NOTES[group], width, initial_indent="  ", subsequent_indent="   ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


class CommandsAction(argparse._SubParsersAction):
    """``add_subparsers(action=CommandsAction)``: each ``add_parser(name)`` takes the command's help,
    description and epilog from :data:`COMMANDS`; a command the table lacks is refused."""

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if name not in BY_NAME:
            raise KeyError(f"harstream {name} is not in streamer/cli/table.py's table")
        given = {"help", "description", "epilog"} & kwargs.keys()
        if given:
            raise TypeError(f"harstream {name}: its {', '.join(sorted(given))} come from the table")
        command = BY_NAME[name]
        kwargs.setdefault("formatter_class", HelpFormatter)
        return super().add_parser(name, help=command.summary, description=command.description,
                                  epilog=command.epilog(), **kwargs)  # fmt: skip


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, except that a paragraph of text whose later lines are indented (a list: the
    examples, the commands) is kept as written; prose paragraphs are filled as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = re.split(r"\n\s*\n", text)
        out = []
        for paragraph in paragraphs:
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines[1:]):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(out)
