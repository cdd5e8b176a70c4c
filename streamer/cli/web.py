"""``harstream web``: the fleet's read-only web page (streamer/web/), served from a ``--store`` and,
with ``--broker``, the topics that ``--publish`` sends. The options and the run live beside the
server in streamer/web/command.py; aiohttp is imported only when the command runs."""

from __future__ import annotations

import argparse

from streamer.web.command import add_arguments, run


def cmd_web(args: argparse.Namespace) -> int:
    return run(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web")  # its help, description and examples: streamer/cli/table.py
    add_arguments(p)
    p.set_defaults(run=cmd_web)
