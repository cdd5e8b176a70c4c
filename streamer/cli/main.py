"""The ``harstream`` command line: the parser, built from a flat list of command modules (each with
``register(subparsers)``; no command module imports another), and the one place where a failure a
user can fix becomes one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from importlib import metadata

from model.extras import missing_package
from streamer.cli import fleet, history, kit, models, record, replay, tools, wearables, web
from streamer.cli.table import BY_NAME, CommandsAction, HelpFormatter, command_list
from streamer.errors import CliError
from streamer.options import OneLineParser

# In the order of their parsers; the help lists them by streamer/cli/table.py's groups.
COMMAND_MODULES = (replay, wearables, fleet, kit, record, models, history, web, tools)

EXAMPLES = """examples:
  harstream replay                                  live dashboard, held-out test subject 2
  harstream replay hapt:2,4,9 --speed 0 --headless --jsonl
  harstream mqtt --broker mqtt://localhost --publish
  harstream publish --broker mqtt://localhost       a simulated wearable, for that mqtt to watch
  harstream serial --port /dev/ttyUSB0 --hz 50
  harstream evaluate --json
  harstream COMMAND --help                          what one command does, its options and examples
"""


def version() -> str:
    try:
        return metadata.version("harstream")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    width = shutil.get_terminal_size().columns - 2  # argparse's own
    parser = OneLineParser(  # its subparsers too: a wrong value is one line, exit 2
        prog="harstream", usage="%(prog)s [-h] [--debug] [--version] COMMAND [OPTIONS]",
        description="Real-time activity recognition for wearables.\n\n" + command_list(width),
        epilog=EXAMPLES, formatter_class=HelpFormatter,
    )  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=f"harstream {version()}")
    # the commands' help, descriptions and examples: streamer/cli/table.py's table, which also lists
    # them, grouped, in the description above (argparse's own list is one flat list: suppressed)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=CommandsAction,
                                help=argparse.SUPPRESS, prog="harstream")  # prog: not the usage above

    for module in COMMAND_MODULES:
        module.register(sub)
    unbuilt = sorted(set(BY_NAME) - set(sub.choices))
    if unbuilt:  # listed in the help, but no parser
        raise RuntimeError(f"streamer/cli/table.py lists commands with no parser: {', '.join(unbuilt)}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `harstream` alone: what it can do, not an argparse complaint
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (CliError, FileNotFoundError, ValueError, OSError, ImportError) as error:
        if args.debug:
            raise
        message = missing_package(error) if isinstance(error, ImportError) else None
        if message and error.name == "torch" and getattr(args, "backend", None) == "torch":
            message += " (or --backend onnx, which runs without it)"
        print(f"harstream {args.command}: {message or error}", file=sys.stderr)
        return 1



if __name__ == "__main__":  # python -m streamer.cli.main: the harstream command without its script
    raise SystemExit(main())
