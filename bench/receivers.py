"""A child process holding many subscribed client connections (fan-out receivers).

Commands arrive as JSON lines on standard input; each gets one JSON line back:

- ``connect``: open ``n`` connections in ``group`` to ``host:port``, each sending the
  ``subscribe`` message (its ``options.filters`` given ``eq_column = eq_start + i`` when
  asked) and waiting for its successful response;
- ``wait``: until every connection of the group received the notification tagged ``tag``
  (the row's ``name``), or ``deadline`` seconds passed; answers the arrival times;
- ``wait_count``: until every connection received ``count`` notifications;
- ``verify``: per connection, each tag of ``tags`` exactly once and nothing else;
- ``close``, ``stop``.

A notification is recognised by ``type == "notification"`` and tagged with
``data.name``; arrival times are ``time.monotonic()`` (the same clock in every process).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import msgspec

from bench.wsclient import WSClient, connect

_encode = msgspec.json.Encoder().encode


class _Frame(msgspec.Struct):
    type: str = ""
    id: str | int | None = None
    success: bool | None = None
    data: Any = None
    error: Any = None


_decode_frame = msgspec.json.Decoder(_Frame).decode
_decode_command = msgspec.json.Decoder().decode


class _Conn:
    __slots__ = ("ack", "count", "last", "seen")

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.count = 0
        self.last = 0.0
        self.ack: asyncio.Future[_Frame] | None = None


class _Group:
    def __init__(self, record: bool) -> None:
        self.record = record
        self.clients: list[WSClient] = []
        self.times: dict[str, list[float]] = {}
        self.total = 0
        self.waiter: tuple[int, asyncio.Event] | None = None
        self.tag_waiter: tuple[str, asyncio.Event] | None = None
        self.other = 0

    def on_message(self, client: WSClient, payload: bytes, now: float) -> None:
        conn = client.state
        assert isinstance(conn, _Conn)
        try:
            message = _decode_frame(payload)
        except msgspec.DecodeError:
            self.other += 1
            return
        if message.type != "notification":
            if conn.ack is not None and not conn.ack.done():
                conn.ack.set_result(message)
            else:
                self.other += 1
            return
        data = message.data
        tag = data.get("name") if isinstance(data, dict) else None
        if not isinstance(tag, str):
            tag = "?"
        conn.seen[tag] = conn.seen.get(tag, 0) + 1
        conn.count += 1
        conn.last = now
        self.total += 1
        if self.record:
            times = self.times.get(tag)
            if times is None:
                times = self.times[tag] = []
            times.append(now)
            tw = self.tag_waiter
            if tw is not None and tw[0] == tag and len(times) >= len(self.clients):
                tw[1].set()
        waiter = self.waiter
        if waiter is not None and self.total >= waiter[0]:
            waiter[1].set()


class Receivers:
    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.groups.get(cmd["group"])
        if group is None:
            group = self.groups[cmd["group"]] = _Group(bool(cmd.get("record")))
        host, port, path = str(cmd["host"]), int(cmd["port"]), str(cmd["path"])
        subscribe = cmd.get("subscribe")
        eq_column = cmd.get("eq_column")
        start = int(cmd.get("eq_start") or 0)
        errors: list[str] = []
        slots = asyncio.Semaphore(20)

        async def one(i: int) -> None:
            async with slots:
                try:
                    client = await connect(host, port, path, group.on_message)
                except (OSError, TimeoutError) as exc:
                    errors.append(f"connect: {exc!r}")
                    return
                conn = _Conn()
                client.state = conn
                if subscribe is not None:
                    message = dict(subscribe)
                    message["id"] = f"sub-{start + i}"
                    if eq_column:
                        message["options"] = {
                            "filters": [
                                {
                                    "column": eq_column,
                                    "operator": "eq",
                                    "value": start + i,
                                }
                            ]
                        }
                    conn.ack = asyncio.get_running_loop().create_future()
                    client.send(_encode(message))
                    try:
                        answer = await asyncio.wait_for(conn.ack, 60)
                    except TimeoutError:
                        errors.append("no answer to subscribe")
                        client.close()
                        return
                    if not answer.success:
                        errors.append(f"subscribe refused: {answer.error!r}")
                        client.close()
                        return
                group.clients.append(client)

        await asyncio.gather(*(one(i) for i in range(int(cmd["n"]))))
        return {
            "connected": len(group.clients),
            "failed": len(errors),
            "errors": errors,
        }

    async def wait(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.groups[cmd["group"]]
        tag = str(cmd["tag"])
        times = group.times.setdefault(tag, [])
        if len(times) < len(group.clients):
            event = asyncio.Event()
            group.tag_waiter = (tag, event)
            try:
                await asyncio.wait_for(event.wait(), float(cmd["deadline"]))
            except TimeoutError:
                pass
            finally:
                group.tag_waiter = None
        return {"times": list(group.times.get(tag, []))}

    async def wait_count(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.groups[cmd["group"]]
        count = int(cmd["count"])
        target = count * len(group.clients)
        if group.total < target:
            event = asyncio.Event()
            group.waiter = (target, event)
            try:
                await asyncio.wait_for(event.wait(), float(cmd["deadline"]))
            except TimeoutError:
                pass
            finally:
                group.waiter = None
        last = max(
            (c.state.last for c in group.clients if isinstance(c.state, _Conn)),
            default=0.0,
        )
        return {"last": last, "total": group.total}

    def verify(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.groups[cmd["group"]]
        tags = [str(t) for t in cmd["tags"]]
        received = lost = duplicated = unexpected = 0
        for client in group.clients:
            conn = client.state
            assert isinstance(conn, _Conn)
            for tag in tags:
                n = conn.seen.pop(tag, 0)
                if n == 0:
                    lost += 1
                else:
                    received += 1
                    duplicated += n - 1
            if cmd.get("final"):
                unexpected += sum(conn.seen.values())
                conn.seen.clear()
        for tag in tags:
            group.times.pop(tag, None)
        return {
            "expected": len(tags) * len(group.clients),
            "received": received,
            "lost": lost,
            "duplicated": duplicated,
            "unexpected": unexpected,
        }

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.groups.pop(cmd["group"], None)
        if group is None:
            return {"closed": 0}
        for client in group.clients:
            client.close()
        await asyncio.sleep(0)
        return {"closed": len(group.clients)}


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    receivers = Receivers()
    out = sys.stdout.buffer
    out.write(_encode({"ready": True}) + b"\n")
    out.flush()
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = _decode_command(line)
        name = cmd.get("cmd")
        answer: dict[str, Any]
        try:
            if name == "connect":
                answer = await receivers.connect(cmd)
            elif name == "wait":
                answer = await receivers.wait(cmd)
            elif name == "wait_count":
                answer = await receivers.wait_count(cmd)
            elif name == "verify":
                answer = receivers.verify(cmd)
            elif name == "close":
                answer = await receivers.close(cmd)
            elif name == "stop":
                for group in list(receivers.groups):
                    await receivers.close({"group": group})
                out.write(_encode({"stopped": True}) + b"\n")
                out.flush()
                return
            else:
                answer = {"error": f"unknown command {name!r}"}
        except Exception as exc:  # noqa: BLE001 - reported to the orchestrator
            answer = {"error": repr(exc)}
        out.write(_encode(answer) + b"\n")
        out.flush()


if __name__ == "__main__":
    from bench.servers import run

    run(main())
