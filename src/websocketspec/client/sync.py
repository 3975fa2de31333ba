"""A small blocking wrapper around the async client.

An :class:`~websocketspec.client.asyncio.AsyncClient` runs on an event loop of its own,
in a background thread.

::

    from websocketspec.client.sync import connect

    with connect("ws://127.0.0.1:8080/ws") as client:
        user = client.create("users", {"name": "Ann", "email": "ann@example.com"})
        with client.subscribe("users") as changes:
            for change in changes:          # blocks; ends when the subscription does
                print(change.operation, change.data)

Every method blocks the calling thread until the answer (or the request's timeout);
reconnection, re-subscription and token refresh happen in the background thread as in
the async client. ``on_change`` callbacks run in a thread of their subscription's own,
in order, so a slow callback delays neither the connection nor other subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from websocketspec.client.asyncio import (
    _DEFAULT,
    AsyncClient,
    ConnectionState,
    Notification,
    Page,
    Subscription,
    Token,
)
from websocketspec.exceptions import ClientError

__all__ = ["Client", "SyncSubscription", "connect"]

log = logging.getLogger("websocketspec.client")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None


class SyncSubscription:
    """A subscription seen from blocking code: iterate it, or give ``on_change``."""

    def __init__(
        self,
        client: Client,
        sub: Subscription,
        on_change: Callable[[Notification], Any] | None,
    ) -> None:
        self._client = client
        self.subscription = sub
        """The underlying async subscription (``id``, ``server_id``, ``position``)."""
        self._queue: queue.SimpleQueue[Notification | _End] = queue.SimpleQueue()
        self._ended = False
        self._forwarder = client._run_soon(self._forward())
        self._thread: threading.Thread | None = None
        if on_change is not None:
            self._thread = threading.Thread(
                target=self._drain,
                args=(on_change,),
                name=f"websocketspec-{sub.id}",
                daemon=True,
            )
            self._thread.start()

    @property
    def id(self) -> str:
        """The subscription's stable handle."""
        return self.subscription.id

    async def _forward(self) -> None:
        try:
            async for change in self.subscription:
                self._queue.put(change)
        except ClientError as exc:
            self._queue.put(_End(exc))
        else:
            self._queue.put(_End(None))

    def get(self, timeout: float | None = None) -> Notification:
        """The next notification, waiting at most ``timeout`` seconds.

        Raises:
            TimeoutError: nothing arrived in time.
            StopIteration: the subscription has ended.
        """
        if self._ended:
            raise StopIteration
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no notification within {timeout} s") from None
        if isinstance(item, _End):
            self._ended = True
            if item.error is not None:
                raise item.error
            raise StopIteration
        return item

    def __iter__(self) -> Iterator[Notification]:
        if self._thread is not None:
            raise TypeError("this subscription delivers to its on_change callback")
        while True:
            try:
                yield self.get()
            except StopIteration:
                return

    def _drain(self, on_change: Callable[[Notification], Any]) -> None:
        while True:
            try:
                change = self.get()
            except (StopIteration, ClientError):
                return
            try:
                on_change(change)
            except Exception:
                log.exception("the on_change callback of %s failed", self.id)

    def unsubscribe(self, *, timeout: float = _DEFAULT) -> None:
        """End the subscription; iteration stops after what already arrived."""
        self._client._run(self.subscription.unsubscribe(timeout=timeout))
        with contextlib.suppress(Exception):
            self._forwarder.result(timeout=self._client._stop_timeout)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._client._stop_timeout)

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ClientError):
            self.unsubscribe()


class Client:
    """The blocking client. Arguments are those of :class:`AsyncClient`."""

    def __init__(self, url: str, *, token: Token = None, **options: Any) -> None:
        self._url = url
        self._token = token
        self._options = options
        self._stop_timeout = float(options.get("connect_timeout", 10.0)) + 5.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="websocketspec-client", daemon=True
        )
        self._async: AsyncClient | None = None
        self._subs: list[SyncSubscription] = []

    @property
    def aclient(self) -> AsyncClient:
        """The underlying :class:`AsyncClient` (use it only from its loop)."""
        if self._async is None:
            raise RuntimeError("the client is not connected: call connect() first")
        return self._async

    @property
    def state(self) -> ConnectionState:
        """The connection's state."""
        return ConnectionState.IDLE if self._async is None else self._async.state

    def _run_soon(self, coro: Coroutine[Any, Any, T]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking client methods cannot run in its own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def connect(self) -> Client:
        """Start the loop thread and open the connection."""
        if self._async is not None:
            raise RuntimeError("connect() was already called")
        self._thread.start()

        async def open_client() -> AsyncClient:
            client = AsyncClient(self._url, token=self._token, **self._options)
            await client.connect()
            return client

        try:
            self._async = self._run(open_client())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def close(self) -> None:
        """Close the connection and stop the loop thread; idempotent."""
        if not self._thread.is_alive():
            return
        if self._async is not None:
            self._run(self._async.close())
        for sub in self._subs:
            if sub._thread is not None:
                sub._thread.join(timeout=self._stop_timeout)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=self._stop_timeout)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Client:
        if self._async is None:
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- operations ---------------------------------------------------------------

    def read(self, entity: str, record_id: Any = None, **options: Any) -> Any:
        """Read one row or a list; see :meth:`AsyncClient.read`."""
        return self._run(self.aclient.read(entity, record_id, **options))

    def read_page(self, entity: str, **options: Any) -> Page:
        """A list read with paging facts; see :meth:`AsyncClient.read_page`."""
        return self._run(self.aclient.read_page(entity, **options))

    def create(self, entity: str, data: Mapping[str, Any], **options: Any) -> Any:
        """Create a row; returns the stored row."""
        return self._run(self.aclient.create(entity, data, **options))

    def update(
        self, entity: str, record_id: Any, data: Mapping[str, Any], **options: Any
    ) -> Any:
        """Change only the keys in ``data``; returns the re-read row."""
        return self._run(self.aclient.update(entity, record_id, data, **options))

    def delete(self, entity: str, record_id: Any, **options: Any) -> Any:
        """Delete a row; returns the deleted row."""
        return self._run(self.aclient.delete(entity, record_id, **options))

    def meta(self, entity: str, **options: Any) -> Any:
        """The entity's description."""
        return self._run(self.aclient.meta(entity, **options))

    def ping(self, *, timeout: float = _DEFAULT) -> None:
        """Round-trip a ``ping`` message."""
        self._run(self.aclient.ping(timeout=timeout))

    def authenticate(self, token: str | None = None, **options: Any) -> Any:
        """Send an ``auth`` message with a new token."""
        return self._run(self.aclient.authenticate(token, **options))

    def subscribe(
        self,
        entity: str,
        *,
        schema: str | None = None,
        filters: Iterable[Any] | None = None,
        columns: Sequence[str] | None = None,
        options: Mapping[str, Any] | None = None,
        snapshot: bool = False,
        on_change: Callable[[Notification], Any] | None = None,
        max_queue: int = 10_000,
        timeout: float = _DEFAULT,
    ) -> SyncSubscription:
        """Subscribe; iterate the result, or pass ``on_change`` (run in its own thread)."""
        client = self.aclient

        async def start() -> Subscription:
            return await client.subscribe(
                entity,
                schema=schema,
                filters=filters,
                columns=columns,
                options=options,
                snapshot=snapshot,
                max_queue=max_queue,
                timeout=timeout,
            )

        sub = self._run(start())
        wrapped = SyncSubscription(self, sub, on_change)
        self._subs.append(wrapped)
        return wrapped


def connect(url: str, *, token: Token = None, **options: Any) -> Client:
    """Connect a blocking client; use it in a ``with`` block or ``close()`` it.

    Keyword options are those of :class:`AsyncClient`.
    """
    return Client(url, token=token, **options).connect()
