"""The web view as a Starlette application: five pages, a JSON API under /api, and a live stream.

Every route is GET (and HEAD): there is nothing to post, so any other method is refused with 405.
The pages are one static shell (static/index.html) whose script draws the page its path names;
the data comes from `WebView` as JSON. `/api/stream` is a server-sent event stream: it sends the
store's `state()` whenever it changes, and a page re-reads its data when the part it shows has
moved, so an open page follows the run without a reload (browsers reconnect an EventSource by
themselves after a network hiccup).

A request's Host header must be one the server was bound to (loopback names by default), which
stops a web page elsewhere from reading the view through DNS rebinding. Files are served only from
the package's static folder (Starlette's StaticFiles refuses paths that leave it) and, for a
mutable file at a commit, through `git cat-file` of a path that must be one of the run's mutable
files: no request can read anything else from the disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evolve.errors import EvolveError

from .individual import individual
from .views import NotFound, WebView

STATIC = Path(__file__).with_name("static")
PAGES = ("/", "/progress", "/tree", "/transfer", "/operators")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
POLL_SECONDS = 1.0  # how often the stream looks at the store
KEEPALIVE_SECONDS = 15.0
# Everything comes from this server: the vendored libraries included, so the view works offline.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class _Headers:
    """Security headers on every response; API answers are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                if api:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


def create_app(path: str | Path, *, allowed_hosts: Sequence[str] = LOCAL_HOSTS) -> Starlette:
    """The application over the workspace at `path`; `allowed_hosts` ["*"] accepts any Host header."""
    view = WebView(path)

    def run_of(request: Request) -> str:
        return view.run_name(request.query_params.get("run"))

    def api(build):
        """A sync JSON endpoint (Starlette runs it in its thread pool) with errors as JSON."""

        def endpoint(request: Request) -> Response:
            try:
                return _JSON(build(request))
            except NotFound as exc:
                return _JSON({"error": str(exc)}, status_code=404)
            except EvolveError as exc:  # AnalysisError included: a one-line problem, not a crash
                return _JSON({"error": str(exc)}, status_code=400)

        return endpoint

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    def plot(request: Request) -> Response:
        try:
            png = view.plot_png(run_of(request), request.path_params["name"])
        except NotFound as exc:
            return _JSON({"error": str(exc)}, status_code=404)
        return Response(png, media_type="image/png")

    def source(request: Request) -> Response:
        try:
            data = view.source(run_of(request), request.path_params["id"], request.path_params["path"])
        except NotFound as exc:
            return _JSON({"error": str(exc)}, status_code=404)
        return Response(data, media_type="text/plain; charset=utf-8")

    async def stream(request: Request) -> Response:
        async def events():
            yield "retry: 2000\n\n"
            last, quiet = None, 0.0
            while True:
                state = await run_in_threadpool(view.state)
                if state != last:
                    yield f"event: state\ndata: {json.dumps(state)}\n\n"
                    last, quiet = state, 0.0
                elif quiet >= KEEPALIVE_SECONDS:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                await anyio.sleep(POLL_SECONDS)
                quiet += POLL_SECONDS

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return _JSON({"error": exc.detail}, status_code=exc.status_code)
        return Response(
            f"{exc.status_code} {exc.detail}\n", status_code=exc.status_code, media_type="text/plain"
        )

    routes = [
        *(Route(p, page) for p in PAGES),
        Route("/api/state", api(lambda r: view.state())),
        Route("/api/runs", api(lambda r: view.runs())),
        Route("/api/overview", api(lambda r: view.overview(run_of(r)))),
        Route("/api/progress", api(lambda r: view.progress(run_of(r)))),
        Route("/api/tree", api(lambda r: view.tree(run_of(r)))),
        Route("/api/transfer", api(lambda r: view.transfer(run_of(r)))),
        Route("/api/operators", api(lambda r: view.operators(run_of(r)))),
        Route("/api/individual/{id}", api(lambda r: individual(view, run_of(r), r.path_params["id"]))),
        Route("/api/source/{id}/{path:path}", source),
        Route("/api/plot/{name}.png", plot),
        Route("/api/stream", stream),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)), Middleware(_Headers)]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: not_found})
    app.state.view = view
    return app
