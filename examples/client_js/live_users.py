"""A live list of users in the browser: the page, the built TypeScript client and the socket on one origin.

Build the client once (``cd clients/js && npm ci && npm run build``), then::

    python examples/client_js/live_users.py --port 8000 --database sqlite:///app.db

and open http://127.0.0.1:8000/. The page subscribes to ``users`` and shows every change
made by anyone (``python examples/quickstart.py``'s clients, the CLI, another tab). Stop and
start this server: the page reconnects and shows the rows anew.

One ASGI app serves ``/`` (the page), ``/live_users.js``, ``/websocketspec/…`` (the built
client, ``clients/js/dist``) and the quickstart's handler at ``/ws``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DIST = ROOT / "clients" / "js" / "dist"

sys.path.insert(0, str(HERE.parent))
import quickstart  # noqa: E402  (examples/quickstart.py: the models and the handler)

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".map": "application/json",
    ".ts": "text/plain; charset=utf-8",
}
PAGES = {"/": HERE / "index.html", "/live_users.js": HERE / "live_users.js"}


def static_file(path: str) -> Path | None:
    """The file served at ``path``, or ``None``."""
    if path in PAGES:
        return PAGES[path]
    prefix = "/websocketspec/"
    if path.startswith(prefix):
        candidate = (DIST / path.removeprefix(prefix)).resolve()
        if candidate.is_relative_to(DIST) and candidate.is_file():
            return candidate
    return None


async def send_file(path: str, send: Any) -> None:
    """Answer an HTTP GET with the file at ``path`` (or 404)."""
    file = static_file(path)
    if file is None:
        body = b"not found"
        if path.startswith("/websocketspec/") and not DIST.is_dir():
            body = b"the client is not built: cd clients/js && npm ci && npm run build"
        status, content_type = 404, "text/plain; charset=utf-8"
    else:
        body = file.read_bytes()
        status, content_type = 200, TYPES.get(file.suffix, "application/octet-stream")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def app(database: str = "sqlite:///app.db") -> Any:
    """The page and the client over HTTP, the quickstart's handler at ``/ws``."""
    socket_app = quickstart.app(database)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send_file(scope["path"], send)
        else:  # lifespan, and websocket: /ws (anything else is refused there)
            await socket_app(scope, receive, send)

    asgi.handler = socket_app.handler  # type: ignore[attr-defined]
    return asgi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--database", default="sqlite:///app.db")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not (DIST / "index.js").is_file():
        parser.error("build the client first: cd clients/js && npm ci && npm run build")
    print(f"live users: http://{args.host}:{args.port}/ on {args.database}", flush=True)
    run(app(args.database), args.host, args.port)


def run(asgi: Any, host: str, port: int) -> None:
    """Serve ``asgi`` with uvicorn until SIGTERM/SIGINT."""
    import uvicorn

    uvicorn.run(
        asgi,
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="info",
    )


if __name__ == "__main__":
    main()
