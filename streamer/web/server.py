"""``harstream web``'s HTTP server (aiohttp): the two pages, their one script and stylesheet, the JSON
API under ``/api/`` and the live push (Server-Sent Events), all read-only.

Safe by default: every response carries a Content-Security-Policy that allows only this server's own
script and stylesheet (no inline script, no other origin); with a token (required off loopback,
see :mod:`streamer.cli.web`) every request must carry it as a bearer header or a cookie, which a
``?token=`` link sets; a bad path or an unknown device is a 404 page; a store or broker that is down
is a banner on the page. The store is read on worker threads, so a slow database never stalls the push.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from model.strict_json import dumps
from streamer.options import parse_when
from streamer.sinks.store import StoreError
from streamer.web.data import (
    STORE_EVERY_S,
    StoreView,
    fleet,
    fleet_row,
    live_part,
    names_of,
    palette,
    statuses,
    wearer,
)
from streamer.web.live import LiveState

log = logging.getLogger(__name__)

PUSH_EVERY_S = 0.25  # live changes are batched: one push per this interval at most
KEEPALIVE_S = 15.0  # a comment line, so proxies and browsers keep an idle stream open
MAX_QUEUED = 64  # pushes waiting for one slow browser; past it, that browser is sent a full reload
COOKIE = "harstream_token"
MAX_LINE = 128 * 1024  # bytes of a request line (aiohttp's default, 8190, is a 900-character id in Chinese)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
PAGES = ("index.html", "device.html", "404.html")
UNAUTHORIZED = "401: this page needs its token (a ?token= link, or a bearer header)\n"


def asset(name: str) -> bytes:
    return resources.files("streamer.web").joinpath("static", name).read_bytes()


@dataclass(eq=False)  # one per browser: kept in a set by identity
class Subscriber:
    """One browser's event stream: the device it watches (None: the fleet) and its queue."""

    device: str | None
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(MAX_QUEUED))


class WebApp:
    """The application's state: the store view, the live state, the browsers' streams."""

    def __init__(self, store: str, broker: str | None, token: str | None = None) -> None:
        self.store = StoreView(store)
        self.live = LiveState(broker)
        self.token = token
        self.subscribers: set[Subscriber] = set()
        self.assets = {name: asset(name) for name in (*STATIC, *PAGES)}  # read once: the package may move
        self._tasks: list[asyncio.Task] = []
        self._status: dict = {}
        self._store_changed = False  # the last read of the store changed something: push every row

    def app(self) -> web.Application:
        # a device's page names it in the path: room for a long id (the store takes any), percent-encoded
        app = web.Application(middlewares=[self.pages_for_errors, self.auth],
                              handler_args={"max_line_size": MAX_LINE})
        app.on_response_prepare.append(self.headers)
        app.router.add_get("/", self.page_fleet)
        app.router.add_get("/device/{device:.+}", self.page_device)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/fleet", self.api_fleet)
        app.router.add_get("/api/device", self.api_device)
        app.router.add_get("/api/history", self.api_history)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/api/stream", self.api_stream)
        app.on_startup.append(self.started)
        app.on_shutdown.append(self.stopping)
        return app

    # -- middlewares -------------------------------------------------------------------------------
    @staticmethod
    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        """On every response, the API's and the event stream's too (``on_response_prepare``)."""
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Cache-Control", "no-store")

    @web.middleware
    async def pages_for_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """A 404 is a page (or JSON under /api/), never a traceback; so is anything unexpected."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self.not_found(request)
        except web.HTTPException:
            raise
        except Exception as error:
            log.error("web: %s %s failed: %s", request.method, request.path, error)
            return web.json_response({"error": "internal error"}, status=500)

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is None:
            return await handler(request)
        given = request.query.get("token")
        if given is not None and self.same(given):  # a link: the cookie, and the token off the address bar
            query = urlencode([(k, v) for k, v in request.query.items() if k != "token"])
            response = web.HTTPSeeOther(request.path + (f"?{query}" if query else ""))
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            raise response
        header = request.headers.get("Authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else None
        if (bearer is not None and self.same(bearer)) or self.same(request.cookies.get(COOKIE)):
            return await handler(request)
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"}, text=UNAUTHORIZED)

    def same(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def not_found(self, request: web.Request) -> web.Response:
        if request.path.startswith("/api/"):
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=self.assets["404.html"], status=404, content_type="text/html")

    # -- pages and assets ----------------------------------------------------------------------------
    async def page_fleet(self, request: web.Request) -> web.Response:
        return web.Response(body=self.assets["index.html"], content_type="text/html")

    async def page_device(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        if not await self.known(device):
            return self.not_found(request)
        return web.Response(body=self.assets["device.html"], content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self.assets[name], content_type=STATIC[name],
                            headers={"Cache-Control": "no-cache"})  # fmt: skip

    async def known(self, device: str) -> bool:
        """Whether any recognizer told of ``device`` (a store that cannot be read: yes, so that the
        page shows its banner rather than a 404 that is not true)."""
        if self.live.of(device) is not None:
            return True
        return await asyncio.to_thread(self.store.knows, device) is not False

    # -- the API ----------------------------------------------------------------------------------------
    async def api_fleet(self, request: web.Request) -> web.Response:
        return self.json(fleet(self.store, self.live))

    async def api_device(self, request: web.Request) -> web.Response:
        device = request.query.get("id", "")
        if not device or not await self.known(device):
            raise web.HTTPNotFound()
        return self.json(await asyncio.to_thread(wearer, device, self.store, self.live))

    async def api_history(self, request: web.Request) -> web.Response:
        """``harstream history --json``: ``?device=ID&since=WHEN&until=WHEN`` (the same forms)."""
        try:
            since, until = parse_when(request.query.get("since")), parse_when(request.query.get("until"))
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        try:
            history = await asyncio.to_thread(self.store.history, request.query.get("device"), since, until)
        except StoreError as error:
            return web.json_response({"error": str(error)}, status=503)
        return self.json(history)

    async def api_status(self, request: web.Request) -> web.Response:
        return self.json(statuses(self.store, self.live) | {"devices": len(self.store.latest)})

    def json(self, value: Any) -> web.Response:
        return web.Response(text=dumps(value), content_type="application/json")

    async def api_stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ``devices`` (changed fleet rows, batched), ``device`` (the watched
        wearer's live state), ``status`` (the banners), ``reload`` (fetch everything again)."""
        subscriber = Subscriber(request.query.get("device"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        self.subscribers.add(subscriber)
        try:
            await response.write(self.event("status", self._status or statuses(self.store, self.live)))
            while True:
                try:
                    message = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    message = b": keepalive\n\n"
                if message is None:  # the server is stopping
                    break
                await response.write(message)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.subscribers.discard(subscriber)
        return response

    @staticmethod
    def event(name: str, value: Any) -> bytes:
        return f"event: {name}\ndata: {dumps(value)}\n\n".encode()

    # -- the background: the store read now and then, live changes pushed in batches ----------------
    async def started(self, app: web.Application) -> None:
        await asyncio.to_thread(self.live.start)
        self._tasks = [asyncio.create_task(self.read_store()), asyncio.create_task(self.push())]

    async def stopping(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for subscriber in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)
        await asyncio.to_thread(self.live.stop)

    async def read_store(self) -> None:
        while True:
            if await asyncio.to_thread(self.store.refresh):
                self._store_changed = True
            await asyncio.sleep(STORE_EVERY_S)

    async def push(self) -> None:
        while True:
            await asyncio.sleep(PUSH_EVERY_S)
            try:
                self.push_once()
            except Exception as error:  # the push must go on
                log.error("web: push failed: %s", error)

    def push_once(self) -> None:
        changed = self.live.take_changed()
        if self._store_changed:  # the store's totals moved: every device's row may have
            self._store_changed = False
            changed |= set(self.store.latest) | set(self.store.today)
        status = statuses(self.store, self.live)
        if status != self._status:
            self._status = status
            self.send(lambda s: self.event("status", status))
        if not changed or not self.subscribers:
            return
        rows: dict[str, bytes] = {}
        if any(s.device is None for s in self.subscribers):
            batch = [fleet_row(d, self.store, self.live.of(d)) for d in sorted(changed)]
            rows[""] = self.event("devices", {"now": time.time(), "devices": batch,
                                              "activities": palette(self.store, names_of(batch))})
        for subscriber in self.subscribers:
            device = subscriber.device
            if device is not None and device in changed and device not in rows:
                rows[device] = self.event("device", live_part(device, self.store, self.live.of(device) or {}))
        self.send(lambda s: rows.get("" if s.device is None else s.device))

    def send(self, message_for: Any) -> None:
        for subscriber in list(self.subscribers):
            message = message_for(subscriber)
            if message is None:
                continue
            try:
                subscriber.queue.put_nowait(message)
            except asyncio.QueueFull:  # a browser that does not read: it starts over from the API
                while not subscriber.queue.empty():
                    subscriber.queue.get_nowait()
                subscriber.queue.put_nowait(self.event("reload", {}))
