"""Matching cost per change with many subscriptions on one entity (in-process).

A real :class:`~websocketspec.Handler`'s subscription table and fan-out hold S
subscriptions on ``posts`` spread over S/10 real :class:`Connection` objects whose
:class:`FrameSink` only counts the frames it is given (so every matched subscriber pays
the real encode and send path, minus the socket). Each workload times
``handler.fanout.deliver(change)`` over many ``create`` changes:

- ``miss``: every subscription is ``user_id eq k`` on a distinct k; the changes' user_id
  matches none (the pure cost of finding candidates);
- ``hit``: the same table; each change matches exactly one subscription;
- ``fan-in``: one value is shared by 1,000 of the subscriptions; each change matches
  those 1,000 (gives the cost per matched subscriber);
- ``mixed``: 98 % distinct equalities, 1 % two-condition equalities, and 1 % residual
  filters the index cannot use (``gt``, ``in``, ``startswith``, none), all evaluated.

The raw baseline is the hand-written minimum: a dict from user_id to subscribers, one
msgspec encode and one sink write per match. Run as
``python -m bench.scenarios.matching --subscriptions N --changes K``; prints JSON.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from bench.common import Child, Report, Row, Settings, median, quickstart

__all__ = ["run_matching"]

ROUNDS = 5


class _CountingSink:
    """A FrameSink that discards frames and counts them."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames = 0

    def write(self, text: str) -> int:
        self.frames += 1
        return 0

    def close(self, code: int, reason: str) -> None:
        pass


def _measure(deliver: Callable[[Any], None], changes: list[Any]) -> float:
    """Median over rounds of µs per change."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for change in changes:
            deliver(change)
        samples.append((time.perf_counter() - start) / len(changes) * 1e6)
    return median(samples)


def _bench(subscriptions: int, n_changes: int) -> dict[str, Any]:
    Post = quickstart().Post  # noqa: N806 - a model class

    from websocketspec import FilterOption, Handler
    from websocketspec.adapters.base import Change
    from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine
    from websocketspec.hooks import Handshake
    from websocketspec.query import Limits, build_where
    from websocketspec.server.connection import Connection
    from websocketspec.server.subscriptions import Subscription

    rng = random.Random(7)
    handler = Handler(SQLAlchemyAdapter(create_engine("sqlite:///:memory:")))
    entity = handler.registry.register_model("public.posts", Post)
    limits = Limits()
    handshake = Handshake("/ws", {}, {}, {}, ("127.0.0.1", 1), ())
    sinks: list[_CountingSink] = []

    def new_connection() -> Connection:
        conn = Connection(handshake, max_queue=10_000, max_queue_bytes=32 << 20)
        sink = _CountingSink()
        sinks.append(sink)
        conn.sink = sink
        return conn

    connections = [new_connection() for _ in range(max(1, subscriptions // 10))]

    def subscribe(i: int, filters: list[Any]) -> None:
        conn = connections[i % len(connections)]
        sub = Subscription(
            id=f"sub-{i}",
            connection=conn,
            entity=entity,
            where=build_where(entity, filters, [], limits),
            columns=None,
        )
        conn.subscriptions[sub.id] = sub
        handler.subscriptions.add(sub)

    def clear() -> None:
        for conn in connections:
            for sub_id in list(conn.subscriptions):
                handler.subscriptions.remove(sub_id)
            conn.subscriptions.clear()

    def frames() -> int:
        return sum(s.frames for s in sinks)

    def post(user_id: int, i: int) -> Any:
        return Change(
            "create",
            entity.key,
            None,
            {
                "id": i,
                "title": f"post {i}",
                "content": "Lorem ipsum dolor sit amet",
                "user_id": user_id,
            },
        )

    deliver = handler.fanout.deliver
    out: dict[str, Any] = {"subscriptions": subscriptions, "changes": n_changes}

    # Raw baseline: index by user_id, one encode + one write per match.
    encoder = msgspec.json.Encoder()
    raw_index: dict[int, list[tuple[str, _CountingSink]]] = {}

    def raw_deliver(change: Any) -> None:
        row = change.new
        for sub_id, sink in raw_index.get(row["user_id"], ()):
            sink.write(
                encoder.encode(
                    {
                        "type": "notification",
                        "operation": "create",
                        "subscription_id": sub_id,
                        "schema": "public",
                        "entity": "posts",
                        "data": row,
                        "metadata": {"source_operation": "create"},
                        "timestamp": datetime.now(UTC).strftime(
                            "%Y-%m-%dT%H:%M:%S.%fZ"
                        ),
                    }
                ).decode()
            )

    # -- selective: distinct equality filters --------------------------------------
    for i in range(subscriptions):
        subscribe(i, [FilterOption("user_id", "eq", i)])
        raw_index.setdefault(i, []).append((f"sub-{i}", sinks[i % len(connections)]))
    gc.collect()
    miss = [
        post(subscriptions + rng.randrange(subscriptions), i) for i in range(n_changes)
    ]
    hit = [post(rng.randrange(subscriptions), i) for i in range(n_changes)]
    before = frames()
    out["miss_us"] = _measure(deliver, miss)
    out["miss_frames"] = frames() - before
    before = frames()
    out["hit_us"] = _measure(deliver, hit)
    out["hit_frames_per_change"] = (frames() - before) / (ROUNDS * n_changes)
    out["raw_miss_us"] = _measure(raw_deliver, miss)
    out["raw_hit_us"] = _measure(raw_deliver, hit)

    # -- fan-in: 1,000 subscriptions share one value -----------------------------------
    clear()
    raw_index.clear()
    shared = min(1_000, subscriptions // 2)
    for i in range(subscriptions):
        value = 0 if i < shared else i
        subscribe(i, [FilterOption("user_id", "eq", value)])
        raw_index.setdefault(value, []).append(
            (f"sub-{i}", sinks[i % len(connections)])
        )
    gc.collect()
    fan = [post(0, i) for i in range(max(20, n_changes // 200))]
    before = frames()
    fan_us = _measure(deliver, fan)
    out["fanin_matches"] = (frames() - before) / (ROUNDS * len(fan))
    out["fanin_us"] = fan_us
    out["per_match_us"] = (fan_us - out["miss_us"]) / shared
    raw_fan = _measure(raw_deliver, fan)
    out["raw_fanin_us"] = raw_fan
    out["raw_per_match_us"] = (raw_fan - out["raw_miss_us"]) / shared

    # -- mixed: some filters the index cannot use ---------------------------------------
    clear()
    residual = max(4, subscriptions // 100)
    two_cond = max(1, subscriptions // 100)
    kinds = [
        [FilterOption("id", "gt", 10**9)],
        [FilterOption("user_id", "in", [-1, -2, -3])],
        [FilterOption("title", "startswith", "zzz")],
        [],
    ]
    for i in range(subscriptions):
        if i < residual:
            filters = kinds[i % len(kinds)]
        elif i < residual + two_cond:
            filters = [
                FilterOption("user_id", "eq", i),
                FilterOption("title", "startswith", "post"),
            ]
        else:
            filters = [FilterOption("user_id", "eq", i)]
        subscribe(i, filters)
    gc.collect()
    # Fewer changes: every one evaluates each residual filter and reaches the
    # unfiltered subscriptions.
    mixed = [
        post(subscriptions + rng.randrange(subscriptions), i)
        for i in range(max(20, n_changes // 100))
    ]
    before = frames()
    out["mixed_us"] = _measure(deliver, mixed)
    out["mixed_frames_per_change"] = (frames() - before) / (ROUNDS * len(mixed))
    out["mixed_residual"] = residual
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=20_000)
    args = parser.parse_args(argv)
    result = _bench(args.subscriptions, args.changes)
    sys.stdout.buffer.write(msgspec.json.encode(result) + b"\n")


async def run_matching(settings: Settings, report: Report, logdir: Path) -> None:
    child = await Child.start(
        "matching",
        "bench.scenarios.matching",
        "--subscriptions",
        str(settings.matching_subscriptions),
        "--changes",
        str(settings.matching_changes),
        logdir=logdir,
    )
    result = await child.read(timeout=900)
    await child.proc.wait()
    report.raw["matching"] = result
    n = settings.matching_subscriptions
    per_match = float(result["per_match_us"])

    def within(v: float) -> bool:
        return v <= 10.0

    def within_one(v: float) -> bool:
        return v <= 10.0 + per_match

    rows: list[
        tuple[str, str, str | None, str, Callable[[float], bool] | None, str]
    ] = [
        (
            "no subscription matches",
            "miss_us",
            "raw_miss_us",
            "≤ 10 µs",
            within,
            f"{result['miss_frames']} frames sent",
        ),
        (
            "one subscription matches",
            "hit_us",
            "raw_hit_us",
            "≤ 10 µs + 1 match",
            within_one,
            f"{result['hit_frames_per_change']:.2f} frames/change",
        ),
        (
            f"{result['fanin_matches']:.0f} match (cost per matched subscriber)",
            "per_match_us",
            "raw_per_match_us",
            "(reported)",
            None,
            f"{result['fanin_us']:,.0f} µs per change in all",
        ),
        (
            f"mixed, {result['mixed_residual']:,} unindexed filters "
            f"({result['mixed_frames_per_change']:.0f} unfiltered match)",
            "mixed_us",
            None,
            "(reported)",
            None,
            f"{result['mixed_frames_per_change']:.2f} frames/change",
        ),
    ]
    for label, fw_key, raw_key, target, check, detail in rows:
        row = Row(
            scenario=f"matching, {n:,} subscriptions on one entity: {label}",
            route="in-process",
            unit="µs",
            framework=[float(result[fw_key])],
            raw=[float(result[raw_key])] if raw_key else None,
            higher_is_better=False,
            target=target,
            fw_detail=detail,
        )
        if check is not None:
            row.meets = bool(check(row.fw_median))
        report.rows.append(row)


if __name__ == "__main__":
    main()
