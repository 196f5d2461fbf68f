"""The aiohttp application: the page, ``/healthz`` and the ``/ws`` stream endpoint.

    app = make_app(engine, ServerOptions(capacity=2))
    run(engine, options)                      # until SIGINT/SIGTERM (launch.serve)
    with BackgroundServer(engine, options) as url: ...   # tests and the latency bench

One stream per WebSocket client, at most ``capacity`` clients; the next one is told the
server is full and closed (code 1013, try again later). With a ``token`` every WebSocket
must carry ``?token=`` (the page forwards its own URL's). A cross-site page cannot drive
the server: a WebSocket whose ``Origin`` is not this server's host is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import logging
import signal
import threading
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from aapt_jax.serve import protocol
from aapt_jax.serve.engine import Engine
from aapt_jax.serve.session import Session

log = logging.getLogger(__name__)

STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
# aiohttp closes a connection (code 1009) past this; up to it, oversized messages get an
# error reply from the protocol and the connection stays open.
HARD_MESSAGE_LIMIT = 2 * protocol.MAX_MESSAGE_BYTES
MAX_RECORD_BYTES = 256 << 20  # per client, for ``export``


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """host/port to bind; capacity: concurrent clients; token: required on /ws when set;
    record_seconds: how much of a stream ``export`` can return (at most 256 MiB of frames)."""
    host: str = "127.0.0.1"
    port: int = 8080
    capacity: int = 2
    token: str | None = None
    record_seconds: float = 300.0

    def __post_init__(self):
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) or self.capacity < 1:
            raise ValueError(f"capacity: expected an int >= 1, got {self.capacity!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port: expected an int in [0, 65535], got {self.port!r}")
        if self.token is not None and len(self.token) < 8:
            raise ValueError(f"token: expected at least 8 characters, got {len(self.token)}")
        if not self.record_seconds > 0:
            raise ValueError(f"record_seconds: expected > 0, got {self.record_seconds!r}")


ENGINE = web.AppKey("engine", Engine)
OPTIONS = web.AppKey("options", ServerOptions)
SESSIONS = web.AppKey("sessions", set)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_app(engine: Engine, options: ServerOptions) -> web.Application:
    app = web.Application()
    app[ENGINE], app[OPTIONS], app[SESSIONS] = engine, options, set()
    app.router.add_get("/", _static_handler("index.html"))
    for name in STATIC_FILES:
        app.router.add_get(f"/static/{name}", _static_handler(name))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/ws", _websocket)
    app.on_shutdown.append(_close_all)
    return app


def _static_handler(name: str):
    body = resources.files("aapt_jax.serve").joinpath("static", name).read_bytes()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    return handler


async def _healthz(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response(dict(status="ok", streams=len(app[SESSIONS]), capacity=app[OPTIONS].capacity,
                                  token_required=app[OPTIONS].token is not None, **app[ENGINE].describe()))


async def _refuse(ws: web.WebSocketResponse, code: str, message: str, close_code: int) -> web.WebSocketResponse:
    await ws.send_json({"type": "error", "code": code, "message": message})
    await ws.close(code=close_code, message=code.encode())
    return ws


async def _websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    options: ServerOptions = app[OPTIONS]
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        log.warning("refused a WebSocket from origin %s", origin)
        raise web.HTTPForbidden(text=f"Origin: expected this server ({request.host}), got {origin}")
    ws = web.WebSocketResponse(max_msg_size=HARD_MESSAGE_LIMIT, heartbeat=30.0)
    await ws.prepare(request)
    if options.token is not None and not hmac.compare_digest(
            request.query.get("token", "").encode(), options.token.encode()):
        return await _refuse(ws, "unauthorized", "token: expected the server's token as ?token=..., "
                             "got a missing or wrong one", 1008)
    sessions: set = app[SESSIONS]
    if len(sessions) >= options.capacity:
        return await _refuse(ws, "capacity", f"the server is at capacity ({options.capacity} streams); "
                             "try again later", 1013)
    engine: Engine = app[ENGINE]
    height, width = engine.video_hw
    record_frames = min(int(options.record_seconds * engine.fps), MAX_RECORD_BYTES // (height * width * 3))
    session = Session(ws, engine, record_frames=max(1, record_frames))
    sessions.add(session)
    log.info("client connected (%d/%d)", len(sessions), options.capacity)
    try:
        await ws.send_json(dict(type="hello", **engine.describe()))
        async for msg in ws:
            try:
                if msg.type == WSMsgType.TEXT:
                    await session.handle_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await session.send_json({"type": "error", "code": "binary", "message":
                                             "message: expected JSON text, got a binary message"})
                elif msg.type == WSMsgType.ERROR:
                    log.info("client connection error: %s", ws.exception())
            except Exception as err:  # noqa: BLE001 (one client's surprise must not end the server)
                log.exception("unexpected error on a message")
                await session.send_json({"type": "error", "code": "internal", "message": f"{type(err).__name__}"})
    finally:
        sessions.discard(session)
        await session.close()
        log.info("client disconnected (%d/%d)", len(sessions), options.capacity)
    return ws


async def _close_all(app: web.Application) -> None:
    for session in list(app[SESSIONS]):
        await session.stop_stream()
        await session.ws.close(code=1001, message=b"server shutting down")


async def _serve(app: web.Application, host: str, port: int, stop: asyncio.Event, ready=None):
    # Streams are closed by on_shutdown; the timeout only bounds a handler still encoding an export.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        bound = runner.addresses[0][1]
        if ready is not None:
            ready(bound)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(engine: Engine, options: ServerOptions, on_ready=None) -> None:
    """Serve until SIGINT or SIGTERM, then close every stream and return."""
    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await _serve(make_app(engine, options), options.host, options.port, stop, on_ready)

    asyncio.run(main())


class BackgroundServer:
    """The server on its own event loop in a thread; ``with ... as url`` gives its base URL."""

    def __init__(self, engine: Engine, options: ServerOptions):
        self.engine, self.options = engine, options
        self._port = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="serve")
        self._loop = self._stop = None
        self.error = None

    def _main(self):
        async def main():
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await _serve(make_app(self.engine, self.options), self.options.host, self.options.port,
                         self._stop, self._bound)

        try:
            asyncio.run(main())
        except BaseException as err:  # noqa: BLE001 (reported to the caller)
            self.error = err
            self._ready.set()

    def _bound(self, port):
        self._port = port
        self._ready.set()

    def __enter__(self) -> str:
        self._thread.start()
        self._ready.wait(60)
        if self._port is None:
            raise RuntimeError(f"the server did not start: {self.error!r}")
        return f"http://{self.options.host}:{self._port}"

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
