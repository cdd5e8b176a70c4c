"""``harstream web``: the fleet's read-only web page (streamer/web/), served from a ``--store`` and,
with ``--broker``, the topics that ``--publish`` sends. Its options are checked here (a host that
is not loopback needs a token); aiohttp is imported only when the command serves, and nothing here
imports torch.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import sys
from typing import Any

from streamer.errors import CliError
from streamer.options import port
from streamer.sinks.store import Target
from streamer.sources.mqtt import parse_broker

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
TOKEN_ENV = "HARSTREAM_WEB_TOKEN"  # the token without it showing in `ps`


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, metavar="PATH_OR_URL",
                   help="the history store the recognizers write (a SQLite file or postgresql://...)")
    p.add_argument("--broker", metavar="URL",
                   help="mqtt://HOST[:PORT]: the live topics that --publish sends (default: the store only)")
    p.add_argument("--host", default=DEFAULT_HOST, metavar="ADDRESS",
                   help=f"the address to listen on (default {DEFAULT_HOST}; any other needs --token)")
    p.add_argument("--port", type=port, default=DEFAULT_PORT, metavar="N",
                   help=f"the port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--token", metavar="SECRET",
                   help=f"every request must carry it (a ?token= link sets a cookie); or ${TOKEN_ENV}")


def checked(args: argparse.Namespace) -> tuple[str | None, str]:
    """The token (None: none asked) and the page's address, or CliError."""
    Target.parse(args.store)  # a malformed --store: one line now, not a banner later
    if args.broker:
        parse_broker(args.broker)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < 8:
        raise CliError("--token: use at least 8 characters (a guessable token guards nothing)")
    if token is None and not is_loopback(args.host):
        raise CliError(f"--host {args.host} lets other machines in: give --token SECRET (or ${TOKEN_ENV}), "
                       "and open the page with ?token=SECRET")  # fmt: skip
    host = f"[{args.host}]" if ":" in args.host else args.host
    return token, f"http://{host}:{args.port}/"


def cmd_web(args: argparse.Namespace) -> int:
    token, address = checked(args)
    from streamer.web.server import WebApp  # aiohttp: only for the command that serves

    app = WebApp(args.store, args.broker, token).app()
    return asyncio.run(serve(app, args.host, args.port, address))


async def serve(app: Any, host: str, port_number: int, address: str) -> int:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)  # a ?token= link must not end up in a log
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port_number).start()
    except OSError as error:
        await runner.cleanup()
        raise CliError(f"cannot listen on {host}:{port_number}: {error.strerror or error}") from None
    print(f"harstream web: serving {address} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web")  # its help, description and examples: streamer/cli/table.py
    add_arguments(p)
    p.set_defaults(run=cmd_web)
