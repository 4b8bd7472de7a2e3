"""``t1tot2 serve``: the one address users open; one session process per browser session.

Opening ``/`` creates a session: a random, unguessable token and a child
process (:mod:`T1ToT2Lib.web.page`) with its own MRML scene and working
folder, listening on a loopback port.  The browser is sent to ``/s/<token>/``
and everything under that prefix (the page, its websocket, uploads,
downloads) is relayed to that child only.  So one browser session never sees
another's volumes, jobs or files: they live in different processes and
folders, reachable only through different tokens.  A session whose page has
been closed for ``idle_timeout`` seconds is ended and its folder deleted; at
most ``max_sessions`` run at once.

The server binds 127.0.0.1 unless told otherwise.  It has no accounts and no
TLS: to serve a network, put it behind a reverse proxy that authenticates
users and terminates HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .page import RELAY_HEADER, RELAY_KEY_ENV
from .safety import DEFAULT_UPLOAD_LIMIT, WebInputError, check_declared_size

LOG = logging.getLogger("t1tot2.serve")
#: Request and response headers that belong to one connection, not to the relayed message.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                "transfer-encoding", "upgrade", "host", "content-length"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# A session process also ends by itself after its idle time, in case the launcher is killed; it waits this much
# longer than the launcher does, so that the launcher, which knows whether a page is relayed, decides first.
CHILD_IDLE_MARGIN = 60


@dataclass
class SessionProcess:
    token: str
    work_dir: Path
    process: asyncio.subprocess.Process
    relay_key: str = ""
    port: int | None = None
    connections: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: str | None = None


class Launcher:
    """The front server: sessions, their processes, and the relay to them."""

    def __init__(self, data_dir=None, model_path=None, upload_limit=DEFAULT_UPLOAD_LIMIT, max_sessions=4,
                 idle_timeout=600.0, work_root=None, device="auto", start_timeout=180.0, python=None):
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self.model_path = Path(model_path).resolve() if model_path else None
        self.upload_limit = int(upload_limit)
        self.max_sessions = int(max_sessions)
        self.idle_timeout = float(idle_timeout)
        self.device = device
        self.start_timeout = float(start_timeout)
        self.python = python or sys.executable
        self._own_root = work_root is None
        self.work_root = Path(work_root) if work_root else Path(tempfile.mkdtemp(prefix="t1tot2-serve-"))
        self.work_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work_root, 0o700)
        self.sessions: dict[str, SessionProcess] = {}
        self._client = None
        self._reaper = None

    # --- aiohttp application ----------------------------------------------------------------------------
    def application(self):
        from aiohttp import web

        app = web.Application(client_max_size=1024 ** 2)
        app.router.add_get("/", self._new_session)
        app.router.add_get("/healthz", self._health)
        app.router.add_route("*", "/s/{token}", self._slash)
        app.router.add_route("*", "/s/{token}/{tail:.*}", self._relay)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _app):
        import aiohttp

        self._client = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        self._reaper = asyncio.ensure_future(self._reap_loop())

    async def _cleanup(self, _app):
        if self._reaper is not None:
            self._reaper.cancel()
        for token in list(self.sessions):
            await self.end_session(token)
        if self._client is not None:
            await self._client.close()
        if self._own_root:
            shutil.rmtree(self.work_root, ignore_errors=True)

    async def _health(self, _request):
        from aiohttp import web

        return web.json_response({"ok": True, "sessions": len(self.sessions)})

    # --- sessions ------------------------------------------------------------------------------------------
    async def _new_session(self, request):
        from aiohttp import web

        if len(self.sessions) >= self.max_sessions:
            return web.Response(status=503, content_type="text/html", text=_page(
                "The server is busy",
                f"{len(self.sessions)} sessions are open, the most this server allows. Close a tab you no longer "
                "use, or try again in a few minutes."))
        session = await self.start_session()
        raise web.HTTPFound(f"/s/{session.token}/")

    async def start_session(self) -> SessionProcess:
        token = secrets.token_urlsafe(24)
        work_dir = self.work_root / token
        work_dir.mkdir(mode=0o700)
        settings = {"work": str(work_dir), "upload_limit": self.upload_limit, "device": self.device,
                    "idle": max(int(self.idle_timeout), 1) + CHILD_IDLE_MARGIN,
                    "data": str(self.data_dir) if self.data_dir else None,
                    "model": str(self.model_path) if self.model_path else None}
        argv = [self.python, "-m", "T1ToT2Lib.web.page", json.dumps(settings)]
        relay_key = secrets.token_urlsafe(24)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{RELAY_KEY_ENV: relay_key})
        env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, env=env,
                                                       stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        session = SessionProcess(token, work_dir, process, relay_key=relay_key)
        self.sessions[token] = session
        asyncio.ensure_future(self._watch(session))
        LOG.info("session %s… started (pid %d)", token[:6], process.pid)
        return session

    async def _watch(self, session: SessionProcess):
        """Read the child's stdout: its "ready" line gives the port; the end of the stream is its end."""
        stream = session.process.stdout
        while True:
            line = await stream.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(text)
                    if event.get("event") == "ready":
                        session.port = int(event["port"])
                        session.last_seen = time.monotonic()  # idle from now on, not from its start
                        session.ready.set()
        await session.process.wait()
        if not session.ready.is_set():
            session.failed = f"the session process ended (status {session.process.returncode}) before it was ready"
            session.ready.set()
        if self.sessions.get(session.token) is session:
            await self.end_session(session.token)

    async def end_session(self, token: str):
        session = self.sessions.pop(token, None)
        if session is None:
            return
        process = session.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        shutil.rmtree(session.work_dir, ignore_errors=True)
        LOG.info("session %s… ended", token[:6])

    async def _reap_loop(self):
        while True:
            await asyncio.sleep(min(5.0, max(self.idle_timeout / 4, 0.2)))
            now = time.monotonic()
            for token, session in list(self.sessions.items()):
                idle = session.ready.is_set() and session.connections == 0
                if idle and now - session.last_seen > self.idle_timeout:
                    await self.end_session(token)

    # --- the relay -----------------------------------------------------------------------------------------
    async def _slash(self, request):
        from aiohttp import web

        raise web.HTTPFound(f"/s/{request.match_info['token']}/")

    async def _session_for(self, request):
        from aiohttp import web

        token = request.match_info["token"]
        session = self.sessions.get(token)
        if session is None:
            raise web.HTTPNotFound(content_type="text/html", text=_page(
                "No such session", "This session has ended or never existed. <a href='/'>Start a new one</a>."))
        try:
            await asyncio.wait_for(session.ready.wait(), self.start_timeout)
        except asyncio.TimeoutError:
            raise web.HTTPServiceUnavailable(text="the session is still starting: reload the page") from None
        if session.failed:
            raise web.HTTPBadGateway(text=f"{session.failed}: reload the page to start a new session")
        session.last_seen = time.monotonic()
        return session

    async def _relay(self, request):
        from aiohttp import web

        session = await self._session_for(request)
        tail = request.match_info["tail"]
        url = f"http://127.0.0.1:{session.port}/{tail}"
        if request.query_string:
            url += f"?{request.query_string}"
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._relay_websocket(request, session, url.replace("http://", "ws://", 1))
        if request.method == "POST":
            try:
                check_declared_size(request.content_length, self.upload_limit)
            except WebInputError as exc:
                return web.json_response({"error": str(exc)}, status=413)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in _HOP_HEADERS and k.lower() != RELAY_HEADER.lower()}
        headers[RELAY_HEADER] = session.relay_key
        data = request.content if request.body_exists else None
        async with self._client.request(request.method, url, headers=headers, data=data,
                                        allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS})
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            session.last_seen = time.monotonic()
            return response

    async def _relay_websocket(self, request, session, url):
        import aiohttp
        from aiohttp import web

        downstream = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await downstream.prepare(request)
        session.connections += 1
        try:
            async with self._client.ws_connect(url, max_msg_size=0, autoping=True,
                                               headers={RELAY_HEADER: session.relay_key}) as upstream:
                async def pump(source, sink):
                    async for message in source:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            await sink.send_str(message.data)
                        elif message.type == aiohttp.WSMsgType.BINARY:
                            await sink.send_bytes(message.data)
                        else:
                            break
                    await sink.close()

                tasks = [asyncio.ensure_future(pump(downstream, upstream)),
                         asyncio.ensure_future(pump(upstream, downstream))]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    task.cancel()
        except aiohttp.ClientError as exc:
            LOG.warning("session %s…: websocket relay failed: %s", session.token[:6], exc)
        finally:
            session.connections -= 1
            session.last_seen = time.monotonic()
            await downstream.close()
        return downstream


def _page(title: str, body_html: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif;margin:3em'><h2>{html.escape(title)}</h2><p>{body_html}</p></body></html>")


def serve(host="127.0.0.1", port=8080, data_dir=None, model_path=None, upload_limit=DEFAULT_UPLOAD_LIMIT,
          max_sessions=4, idle_timeout=600.0, device="auto") -> int:
    """Run the launcher until interrupted (Ctrl+C or SIGTERM); prints {"event": "listening", "url"} when it serves
    (``port=0`` picks a free port, which that line gives)."""
    from aiohttp import web

    logging.basicConfig(level=logging.WARNING, format="t1tot2 serve: %(message)s", stream=sys.stderr)
    LOG.setLevel(logging.INFO)
    launcher = Launcher(data_dir=data_dir, model_path=model_path, upload_limit=upload_limit,
                        max_sessions=max_sessions, idle_timeout=idle_timeout, device=device)
    if host not in LOOPBACK:
        print(f"t1tot2 serve: WARNING: listening on {host}, not only on this computer: anyone who can reach this "
              "port can use the server (no accounts, no HTTPS). Put it behind an authenticating HTTPS proxy.",
              file=sys.stderr)

    async def run():
        runner = web.AppRunner(launcher.application(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            actual = runner.addresses[0][1] if runner.addresses else port
            print(json.dumps({"event": "listening", "url": f"http://{_url_host(host)}:{actual}/"}), flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
