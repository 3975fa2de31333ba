"""Notification latency through each broker, beside the in-process broker, in one run.

Two direct servers share one PostgreSQL database (one of this run's own per broker); a writer on server A
creates rows one at a time and a subscriber on server B receives each notification. The
latency is the time from sending the create to receiving the notification on the other
server. For the in-process broker (one process only) writer and subscriber share one
server: that is the floor the shared brokers are compared with. Rounds interleave the
brokers; the table gives medians of the per-round p50 and p99, and the ratio to the
in-process broker. Every notification is counted: none lost, none duplicated.

    python bench/broker_latency.py            # 5 rounds x 300 changes per broker
    python bench/broker_latency.py --quick    # 1 round x 20 (the test)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.databases import create_database, drop_database
from tests.support.models import MODELS, Base
from websockets.asyncio.client import ClientConnection, connect

from websocketspec import Handler
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine
from websocketspec.broker.memory import MemoryBroker
from websocketspec.broker.postgres import PostgresBroker
from websocketspec.broker.redis import RedisBroker
from websocketspec.server.direct import DirectServer

REDIS_URL = os.environ.get("WEBSOCKETSPEC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT = 30.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def server(url: str, broker: Any) -> DirectServer:
    handler = Handler(SQLAlchemyAdapter(create_engine(url)), broker=broker)
    for name, model in MODELS.items():
        handler.registry.register_model(name, model)
    direct = DirectServer(handler, "127.0.0.1", 0, ping_interval=None)
    await direct.start()
    return direct


async def rpc(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    while True:
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if answer.get("id") == message["id"]:
            return answer


async def measure(writer_port: int, reader_port: int, count: int) -> list[float]:
    """Seconds from create to notification, for ``count`` sequential creates."""
    async with (
        connect(f"ws://127.0.0.1:{writer_port}/ws") as writer,
        connect(f"ws://127.0.0.1:{reader_port}/ws") as reader,
    ):
        sub = await rpc(
            reader,
            {
                "id": "s",
                "type": "subscription",
                "operation": "subscribe",
                "entity": "users",
            },
        )
        assert sub["success"], sub
        latencies = []
        seen: set[int] = set()
        for i in range(count):
            started = time.perf_counter()
            await writer.send(
                json.dumps(
                    {
                        "id": i,
                        "type": "request",
                        "operation": "create",
                        "entity": "users",
                        "data": {"name": f"n{i}", "email": f"n{i}@example.com"},
                    }
                )
            )
            note = json.loads(await asyncio.wait_for(reader.recv(), TIMEOUT))
            latencies.append(time.perf_counter() - started)
            assert note["type"] == "notification" and note["data"]["name"] == f"n{i}", (
                note
            )
            seq = note["metadata"]["seq"]
            assert seq not in seen, f"duplicate notification {seq}"
            seen.add(seq)
            answer = json.loads(await asyncio.wait_for(writer.recv(), TIMEOUT))
            assert answer["success"], answer
        assert len(seen) == count, "lost notifications"
    return latencies


async def fresh_database() -> str:
    url = await create_database()
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await engine.dispose()
    return url


async def run(rounds: int, count: int) -> list[dict[str, Any]]:
    # A database per broker: servers of one broker share it; the others never see it.
    urls = {
        name: await fresh_database() for name in ("in-process", "redis", "postgresql")
    }
    channel = f"wsspec-bench-latency:{uuid.uuid4().hex}"
    servers: dict[str, tuple[DirectServer, DirectServer]] = {}
    try:
        memory = await server(urls["in-process"], MemoryBroker())
        servers["in-process"] = (memory, memory)
        redis_url = urls["redis"]
        servers["redis"] = (
            await server(redis_url, RedisBroker(REDIS_URL, channel=channel)),
            await server(redis_url, RedisBroker(REDIS_URL, channel=channel)),
        )
        pg_url = urls["postgresql"]
        servers["postgresql"] = (
            await server(pg_url, PostgresBroker(pg_url)),
            await server(pg_url, PostgresBroker(pg_url)),
        )
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, (a, b) in servers.items():  # interleaved
                latencies = await measure(a.port, b.port, count)
                results[name].append(
                    (percentile(latencies, 0.5), percentile(latencies, 0.99))
                )
    finally:
        stopped: set[int] = set()
        for a, b in servers.values():
            for s in (a, b):
                if id(s) not in stopped:
                    stopped.add(id(s))
                    await s.stop(timeout=2)
        for url in urls.values():
            await drop_database(url)
    floor = statistics.median(p50 for p50, _ in results["in-process"])
    rows = []
    for name, values in results.items():
        p50 = statistics.median(v[0] for v in values)
        p99 = statistics.median(v[1] for v in values)
        rows.append(
            {
                "broker": name,
                "p50_ms": p50 * 1000,
                "p99_ms": p99 * 1000,
                "ratio": p50 / floor,
                "changes": rounds * count,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Notification latency through each broker."
    )
    parser.add_argument("--quick", action="store_true", help="1 round x 20 changes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    rounds, count = (1, 20) if args.quick else (args.rounds, args.count)
    rows = asyncio.run(run(rounds, count))
    print("| broker | p50 | p99 | p50 / in-process | changes (all delivered once) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['broker']} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['ratio']:.2f} | {r['changes']} |"
        )


if __name__ == "__main__":
    main()
