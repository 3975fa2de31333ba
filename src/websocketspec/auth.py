"""Bearer-token authentication: in the handshake, and refreshed in-band.

:class:`BearerAuth` installs itself on a :class:`~websocketspec.Handler`:

- In the handshake it takes the token from ``Authorization: Bearer <token>``, from a
  ``bearer.<token>`` entry of ``Sec-WebSocket-Protocol`` (browsers cannot set headers;
  the server then selects the fixed subprotocol ``websocketspec`` and never echoes the
  token), or, if enabled, from a query parameter. It calls your ``verify`` function and
  refuses the upgrade with HTTP 401 when there is no valid token.
- An ``auth`` message (``{"type": "request", "operation": "auth", "data": {"token":
  …}}``) replaces the connection's identity without reconnecting. Every subscription is
  checked again for the new identity; one it may no longer see is revoked with a
  notification (``operation: "revoked"``).
- When the identity expires, the server sends a ``token_expired`` notification, refuses
  requests (``unauthorized``) and waits ``grace_period`` seconds for an ``auth``
  message; without one it revokes every subscription and closes with 4001.

``verify(token)`` (plain or async) returns an :class:`Identity`, or a mapping stored in
``connection.metadata`` (its ``exp`` key, a Unix time, sets the expiry), or ``None`` to
refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias, cast

from websocketspec.exceptions import UnauthorizedError, ValidationError
from websocketspec.hooks import Handshake, HookContext, HookType
from websocketspec.protocol.codec import now
from websocketspec.server.app import Handler
from websocketspec.server.connection import Connection, State

__all__ = ["BearerAuth", "Identity", "Verify"]

log = logging.getLogger(__name__)

AUTH_EXPIRED_CLOSE_CODE = 4001


@dataclass(slots=True)
class Identity:
    """Who a connection acts for.

    Args:
        metadata: stored in ``connection.metadata`` for hooks (``user_id``, roles, …).
        expires_at: when the identity stops being valid (Unix time or aware datetime).
    """

    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: float | datetime | None = None

    @property
    def expiry(self) -> float | None:
        """The expiry as a Unix time."""
        if isinstance(self.expires_at, datetime):
            return self.expires_at.timestamp()
        return self.expires_at


Verify: TypeAlias = Callable[
    [str],
    "Awaitable[Identity | Mapping[str, Any] | None] | Identity | Mapping[str, Any] | None",
]


@dataclass(slots=True)
class _State:
    keys: tuple[str, ...] = ()
    expired: bool = False
    timer: asyncio.Task[None] | None = None


class BearerAuth:
    """Authenticate connections with bearer tokens.

    Args:
        verify: checks a token; returns an identity, a metadata mapping or ``None``.
        header: accept ``Authorization: Bearer <token>``.
        subprotocol: the subprotocol selected when the client offers it (with or
            without a ``bearer.<token>`` entry); ``None`` disables tokens there.
        query_param: accept the token in this query parameter (off by default:
            URLs end up in logs).
        required: refuse connections without a token (401). When ``False`` they
            connect anonymously and may authenticate later with an ``auth`` message.
        grace_period: seconds an expired connection has to send a new token.
    """

    def __init__(
        self,
        verify: Verify,
        *,
        header: bool = True,
        subprotocol: str | None = "websocketspec",
        query_param: str | None = None,
        required: bool = True,
        grace_period: float = 30.0,
    ) -> None:
        self.verify = verify
        self.header = header
        self.subprotocol = subprotocol
        self.query_param = query_param
        self.required = required
        self.grace_period = grace_period
        self._handler: Handler | None = None
        self._states: dict[str, _State] = {}

    def install(self, handler: Handler) -> BearerAuth:
        """Register the hooks and the ``auth`` message on ``handler``."""
        if self._handler is not None:
            raise ValueError("this BearerAuth is already installed on a handler")
        self._handler = handler
        handler.hooks.register_before(HookType.CONNECT, self._on_connect)
        handler.hooks.register_before(HookType.HANDLE, self._on_request)
        handler.hooks.register_after(HookType.DISCONNECT, self._on_disconnect)
        handler.dispatcher.authenticator = self
        return self

    # -- handshake ------------------------------------------------------------------

    def token_from(self, handshake: Handshake) -> tuple[str | None, bool]:
        """The token of a handshake, and whether the subprotocol carried it."""
        if self.header:
            value = handshake.headers.get("authorization", "")
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip(), False
        if self.subprotocol is not None:
            for offered in handshake.subprotocols:
                if offered.lower().startswith("bearer.") and len(offered) > 7:
                    return offered[7:], True
        if self.query_param is not None:
            param = handshake.query_params.get(self.query_param)
            if param:
                return param, False
        return None, False

    async def _on_connect(self, ctx: HookContext) -> None:
        handshake = ctx.handshake
        if self.subprotocol is not None and self.subprotocol in handshake.subprotocols:
            ctx.subprotocol = self.subprotocol
        token, _ = self.token_from(handshake)
        if token is None:
            if self.required:
                raise UnauthorizedError(
                    "a bearer token is required (Authorization: Bearer <token>, or the "
                    f"subprotocols '{self.subprotocol}, bearer.<token>')"
                )
            return
        identity = await self._verify(token)
        self._apply(cast(Connection, ctx.connection), identity)

    # -- in-band refresh ------------------------------------------------------------

    async def authenticate(
        self, conn: Connection, credentials: dict[str, Any]
    ) -> dict[str, Any]:
        """Verify an ``auth`` message's token and replace the connection's identity."""
        token = credentials.get("token")
        if not isinstance(token, str) or not token:
            raise ValidationError(
                "data.token must be a non-empty string", field="token"
            )
        identity = await self._verify(token)
        self._apply(conn, identity)
        expiry = identity.expiry
        return {
            "authenticated": True,
            "expires_at": None
            if expiry is None
            else datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    async def _verify(self, token: str) -> Identity:
        try:
            outcome = self.verify(token)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except UnauthorizedError:
            raise
        except Exception as exc:
            log.warning("token verification failed", exc_info=exc)
            raise UnauthorizedError("the token is not valid") from None
        if outcome is None:
            raise UnauthorizedError("the token is not valid")
        if isinstance(outcome, Identity):
            identity = outcome
        else:
            metadata = dict(outcome)
            exp = metadata.get("exp")
            identity = Identity(
                metadata, float(exp) if isinstance(exp, (int, float)) else None
            )
        expiry = identity.expiry
        if expiry is not None and expiry <= time.time():
            raise UnauthorizedError("the token has expired")
        return identity

    def _apply(self, conn: Connection, identity: Identity) -> None:
        state = self._states.setdefault(conn.id, _State())
        for key in state.keys:
            conn.metadata.pop(key, None)
        conn.metadata.update(identity.metadata)
        state.keys = tuple(identity.metadata)
        state.expired = False
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        expiry = identity.expiry
        if expiry is not None:
            state.timer = asyncio.create_task(self._expire(conn, state, expiry))

    # -- expiry ---------------------------------------------------------------------

    async def _expire(self, conn: Connection, state: _State, expiry: float) -> None:
        await asyncio.sleep(max(0.0, expiry - time.time()))
        if conn.state is not State.OPEN:
            return
        state.expired = True
        conn.send(
            {
                "type": "notification",
                "operation": "token_expired",
                "subscription_id": None,
                "data": {"grace_period": self.grace_period},
                "metadata": {
                    "message": "the token expired; send "
                    '{"type": "request", "operation": "auth", "data": {"token": ...}}'
                },
                "timestamp": now(),
            }
        )
        await asyncio.sleep(self.grace_period)
        if not state.expired or conn.state is not State.OPEN or self._handler is None:
            return
        dispatcher = self._handler.dispatcher
        for sub in list(conn.subscriptions.values()):
            dispatcher.revoke(conn, sub, "token_expired", "the token expired")
        conn.close(AUTH_EXPIRED_CLOSE_CODE, "authentication expired")

    async def _on_request(self, ctx: HookContext) -> None:
        state = self._states.get(ctx.connection.id)
        if state is not None and state.expired:
            raise UnauthorizedError(
                "the token expired; send an auth message with a new one"
            )
        if state is None and self.required is False:
            return

    async def _on_disconnect(self, ctx: HookContext) -> None:
        state = self._states.pop(ctx.connection.id, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.timer
