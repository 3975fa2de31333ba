"""The server the TypeScript client's tests run against, as a process of its own.

``python -m tests.e2e.server --port N --database URL [--auth]`` serves
``examples/client_js/live_users.py``'s app with uvicorn: the live-users page, the built client
at ``/websocketspec/`` and the quickstart's models at ``/ws``. With ``--auth`` the handler
requires bearer tokens (:class:`~websocketspec.auth.BearerAuth`) of the test form
``<user>.<expiry in Unix milliseconds>``, and user ``blocked`` may not subscribe, so that
the tests can see ``token_expired``, the in-band ``auth`` refresh and ``revoked``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from websocketspec import HookContext, HookType, UnauthorizedError
from websocketspec.auth import BearerAuth, Identity

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "client_js"))
import live_users

TOKEN = re.compile(r"(?P<user>[a-z0-9_-]+)\.(?P<expiry>[0-9]+)")


def verify(token: str) -> Identity | None:
    """Accept ``<user>.<expiry ms>``; the expiry makes the server send ``token_expired``."""
    match = TOKEN.fullmatch(token)
    if match is None:
        return None
    return Identity({"user": match["user"]}, expires_at=int(match["expiry"]) / 1000.0)


def refuse_blocked(ctx: HookContext) -> None:
    if ctx.connection.metadata.get("user") == "blocked":
        raise UnauthorizedError("user 'blocked' may not subscribe")


def build(database: str, *, auth: bool, grace_period: float) -> Any:
    """The live-users app, with bearer authentication when ``auth``."""
    app = live_users.app(database)
    if auth:
        BearerAuth(verify, grace_period=grace_period).install(app.handler)
        app.handler.hooks.register_before(HookType.SUBSCRIBE, refuse_blocked)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--grace-period", type=float, default=10.0)
    args = parser.parse_args(argv)
    app = build(args.database, auth=args.auth, grace_period=args.grace_period)
    print(f"test server: http://{args.host}:{args.port}/ auth={args.auth}", flush=True)
    live_users.run(app, args.host, args.port)


if __name__ == "__main__":
    main()
