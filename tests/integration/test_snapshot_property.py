"""Snapshot + stream under concurrent writes: no gap, no duplicate (a property test).

Each example seeds rows, then starts 1-3 writers (each on its own connection, creating,
updating and deleting rows of its own) and, at a random point of one writer's
sequence, a subscribe with ``snapshot: true`` that races the remaining writes. When
all writes are done, one last row that matches the filter is written and awaited: the
stream is in order, so everything before it has arrived. Then:

- every notification's ``seq`` is beyond the snapshot's position, in the same epoch,
  strictly increasing (so none arrives twice);
- applying the notifications to the snapshot's rows (create and update upsert by id,
  delete removes; a create of a row already held or an update/delete of a row never
  seen fails at once) gives exactly what a fresh read with the same filter returns.

Runs on SQLite and PostgreSQL with the memory broker (writers on the subscriber's
server), and on PostgreSQL with the PostgreSQL broker and two servers on one database
(writers on both, so changes reach the subscriber's server from another process while
the snapshot is taken). Derandomized by the conftest profile: 30 examples per case.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.integration.test_delivery import (
    TIMEOUT,
    Node,
    apply,
    create,
    notes_until,
    read_all,
    shared_database,
    shared_nodes,
    subscribe,
)
from tests.support.wsclient import WSClient

Row = dict[str, Any]
Note = dict[str, Any]
EXAMPLES = 30
MARKER: dict[str, Any] = {"status": "a", "age": 99}
"""The last row of every example: it matches every filter below."""


@pytest.fixture
def shell(backend: str) -> str:
    """One shell per database (the shells are covered elsewhere): both get exercised."""
    return "asgi" if backend == "sqlite" else "direct"


# -- examples -------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str
    """``create``, ``update`` or ``delete`` (of one of the writer's rows)."""
    pick: int
    """Which of the writer's live rows an update or delete targets (modulo)."""
    status: str
    age: int


@dataclass(frozen=True)
class Example:
    seeds: list[list[Op]]
    """Rows each writer creates before anything else starts."""
    writers: list[list[Op]]
    """What each writer does, concurrently with the others and the subscribe."""
    trigger: tuple[int, int]
    """(writer, n): the subscribe starts once that writer has sent n of its writes."""
    filter_kind: int
    threshold: int

    def filters(self, tag: str) -> list[Row]:
        mine: Row = {"column": "email", "operator": "eq", "value": tag}
        t = self.threshold
        age_gte: Row = {"column": "age", "operator": "gte", "value": t}
        status_a: Row = {"column": "status", "operator": "eq", "value": "a"}
        choices: list[list[Row]] = [
            [mine],
            [mine, age_gte],
            [mine, status_a],
            # (email = tag) AND (age < t OR status = 'a')
            [
                mine,
                {"column": "age", "operator": "lt", "value": t},
                {**status_a, "logic_operator": "OR"},
            ],
            [mine, {"column": "status", "operator": "neq", "value": "b"}],
        ]
        return choices[self.filter_kind]


ops = st.builds(
    Op,
    kind=st.sampled_from(["create", "update", "update", "delete"]),
    pick=st.integers(0, 10),
    status=st.sampled_from("abc"),
    age=st.integers(0, 9),
)


@st.composite
def examples(draw: st.DrawFn) -> Example:
    count = draw(st.integers(1, 3))
    writers = [draw(st.lists(ops, min_size=1, max_size=8)) for _ in range(count)]
    seeds = [draw(st.lists(ops, max_size=3)) for _ in range(count)]
    who = draw(st.integers(0, count - 1))
    when = draw(st.integers(0, len(writers[who])))
    return Example(
        seeds=seeds,
        writers=writers,
        trigger=(who, when),
        filter_kind=draw(st.integers(0, 4)),
        threshold=draw(st.integers(0, 10)),
    )


# -- running one ----------------------------------------------------------------------


class Writer:
    def __init__(self, client: WSClient, tag: str) -> None:
        self.client = client
        self.tag = tag
        self.own: list[int] = []

    async def create(self, op: Op) -> None:
        row = await create(
            self.client,
            name=f"r{len(self.own)}",
            email=self.tag,
            status=op.status,
            age=op.age,
        )
        self.own.append(row["id"])

    async def do(self, op: Op) -> None:
        if op.kind == "create" or not self.own:
            await self.create(op)
            return
        key = self.own[op.pick % len(self.own)]
        if op.kind == "update":
            await self.client.ok(
                "update",
                "users",
                record_id=str(key),
                data={"status": op.status, "age": op.age},
            )
        else:
            self.own.remove(key)
            await self.client.ok("delete", "users", record_id=str(key))


async def run_example(
    example: Example,
    writer_clients: list[WSClient],
    subscriber: WSClient,
) -> None:
    assert await subscriber.drain() == []  # nothing left from an earlier example
    tag = f"ex-{uuid.uuid4().hex}"
    filters = example.filters(tag)
    writers = [
        Writer(c, tag) for c, _ in zip(writer_clients, example.writers, strict=False)
    ]
    for writer, seeds in zip(writers, example.seeds, strict=True):
        for op in seeds:
            await writer.create(op)

    go = asyncio.Event()
    who, when = example.trigger

    async def write(index: int, writer: Writer, todo: list[Op]) -> None:
        for n, op in enumerate(todo):
            if (index, n) == (who, when):
                go.set()  # the subscribe goes out together with this write
            await writer.do(op)
        if (index, len(todo)) == (who, when):
            go.set()

    async def snapshot() -> Row:
        await go.wait()
        return await subscribe(subscriber, snapshot=True, filters=filters, limit=1000)

    async with asyncio.timeout(TIMEOUT):
        snap = asyncio.ensure_future(snapshot())
        await asyncio.gather(
            snap,
            *(
                write(i, w, todo)
                for i, (w, todo) in enumerate(
                    zip(writers, example.writers, strict=True)
                )
            ),
        )
    answer = snap.result()
    marker = await create(writer_clients[-1], name="marker", email=tag, **MARKER)
    notes = await notes_until(
        subscriber, lambda n: n["data"] is not None and n["data"]["id"] == marker["id"]
    )
    notes += await subscriber.drain()  # anything left over would be a duplicate

    position = answer["position"]
    assert answer["total"] == len(answer["rows"])
    assert {n["subscription_id"] for n in notes} == {answer["subscription_id"]}
    assert {n["metadata"]["epoch"] for n in notes} == {position["epoch"]}
    order = [n["metadata"]["seq"] for n in notes]
    assert order == sorted(set(order)), f"a seq twice or out of order: {order}"
    assert order[0] > position["seq"], (order, position)
    state = apply({row["id"]: row for row in answer["rows"]}, notes)
    fresh = await read_all(writer_clients[0], filters=filters)
    assert state == {row["id"]: row for row in fresh}
    answer = await subscriber.unsubscribe(answer["subscription_id"])
    assert answer["success"] is True, answer


Connect = Callable[..., Awaitable[WSClient]]


@pytest.fixture
async def clients(connect: Connect) -> list[WSClient]:
    """Three writers and a subscriber, kept for every example of a test."""
    return [await connect() for _ in range(4)]


@settings(max_examples=EXAMPLES)
@given(example=examples())
async def test_snapshot_then_stream_has_no_gap_and_no_duplicate(
    clients: list[WSClient], example: Example
) -> None:
    """Memory broker, one server: writers race the snapshot on the same server."""
    await run_example(example, clients[:3], clients[3])


@pytest.fixture
async def nodes(backend: str, tmp_path: Path) -> AsyncIterator[list[Node]]:
    """Two servers on one database of their own sharing a broker; on A a writer and
    the subscriber, on B two writers."""
    async with (
        shared_database(backend, tmp_path) as url,
        shared_nodes(url, 2) as (a, b),
    ):
        for node in (b, a, b, a):
            await node.connect()
        yield [a, b]


@pytest.mark.parametrize("backend", ["postgresql"])
@settings(max_examples=EXAMPLES)
@given(example=examples())
async def test_snapshot_then_stream_across_two_servers(
    nodes: list[Node], example: Example
) -> None:
    """PostgreSQL broker, two servers: changes from B reach A while A snapshots."""
    a, b = nodes
    await run_example(example, [b.clients[0], a.clients[0], b.clients[1]], a.clients[1])
