"""After-read hooks declared per identity, over real sockets (issue #5).

A hook registered with ``per_identity=True`` promised that its outcome depends only on
the row and the connection's identity (``Config.identity``, by default
``metadata["user_id"]``; anonymous connections are one identity). The fan-out then runs
the hooks once per identity and shape (operation, enter/stay/leave, columns) of each
change, instead of once per subscriber; every subscriber is still told exactly what it
would be told alone, exactly once: its own subscription id, columns and enter/stay/
leave, its identity's result. Hooks not so declared still run once per subscriber.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import (
    Config,
    Handler,
    HookContext,
    HookType,
    UnauthorizedError,
)

Connect = Callable[..., Awaitable[WSClient]]
Row = dict[str, Any]
Note = dict[str, Any]

ACTIVE = [{"column": "status", "operator": "eq", "value": "active"}]
NARROW = ["name", "email"]


def identify(handler: Handler) -> None:
    """The ``X-User`` header is the connection's identity (none: anonymous)."""

    @handler.hooks.before(HookType.CONNECT)
    def who(ctx: HookContext) -> None:
        user = ctx.handshake.headers.get("x-user")
        if user is not None:
            ctx.connection.metadata["user_id"] = user
        tenant = ctx.handshake.headers.get("x-tenant")
        if tenant is not None:
            ctx.connection.metadata["tenant"] = tenant


def mask(row: Any) -> None:
    if isinstance(row, dict) and "email" in row:
        row["email"] = "***"


@dataclass
class Subscriber:
    """One connection of some identity and its subscriptions, by kind."""

    identity: str | None
    client: WSClient
    subs: dict[str, str] = field(default_factory=dict)
    """Kind ("all", "narrow", "active") -> subscription id."""
    notes: list[Note] = field(default_factory=list)

    async def subscribe(self, kind: str) -> None:
        options: dict[str, Any] = {}
        if kind == "narrow":
            options["columns"] = NARROW
        elif kind == "active":
            options["filters"] = ACTIVE
        self.subs[kind] = await self.client.subscribe("users", options=options)

    async def take(self, count: int) -> list[Note]:
        """The next ``count`` notifications (one per subscription for one change)."""
        got = [await self.client.notification() for _ in range(count)]
        self.notes.extend(got)
        return got

    def by_kind(self, notes: list[Note]) -> dict[str, Note]:
        """Each subscription's note of one change: exactly one each."""
        kinds = {sub_id: kind for kind, sub_id in self.subs.items()}
        ids = [n["subscription_id"] for n in notes]
        assert sorted(ids) == sorted(self.subs.values()), (ids, self.subs)
        return {kinds[n["subscription_id"]]: n for n in notes}


async def subscribers(
    connect: Connect,
    identities: tuple[str | None, ...],
    kinds: tuple[str, ...],
    each: int = 2,
) -> list[Subscriber]:
    """``each`` connections per identity, each subscribed once per kind."""
    out = []
    for identity in identities:
        headers = {} if identity is None else {"X-User": identity}
        for _ in range(each):
            subscriber = Subscriber(identity, await connect(additional_headers=headers))
            for kind in kinds:
                await subscriber.subscribe(kind)
            out.append(subscriber)
    return out


async def each_told(subs: list[Subscriber]) -> list[dict[str, Note]]:
    """Every subscription's one note of the latest change, per subscriber."""
    async with asyncio.timeout(TIMEOUT):
        return [s.by_kind(await s.take(len(s.subs))) for s in subs]


async def nothing_more(subs: list[Subscriber]) -> None:
    for s in subs:
        assert await s.client.drain() == []


def notification_runs(calls: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Takes the calls recorded so far (and forgets them)."""
    out = list(calls)
    calls.clear()
    return out


# -- once per identity and shape ------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_per_identity_hook_runs_once_per_identity_and_shape(
    handler: Handler, connect: Connect, flavour: str
) -> None:
    identify(handler)
    calls: list[tuple[Any, ...]] = []

    def record(ctx: HookContext) -> None:
        if ctx.subscription_id is None:
            return  # a request's read
        assert isinstance(ctx.result, dict)
        calls.append(
            (
                ctx.connection.metadata.get("user_id"),
                tuple(sorted(ctx.result)),
                ctx.subscription_id,
            )
        )
        mask(ctx.result)

    if flavour == "sync":
        handler.hooks.register_after(HookType.READ, record, per_identity=True)
    else:

        @handler.hooks.after(HookType.READ, per_identity=True)
        async def masked(ctx: HookContext) -> None:
            await asyncio.sleep(0)  # a real suspension in the fan-out's worker
            record(ctx)

    identities = ("ann", "bob", None)
    subs = await subscribers(connect, identities, ("all", "narrow", "active"))
    ids = {sub_id for s in subs for sub_id in s.subs.values()}
    assert len(ids) == 18
    writer = await connect()

    def check_runs(shapes: int) -> None:
        runs = notification_runs(calls)
        # One run per identity and shape, each on a subscription of that identity.
        assert len(runs) == len(identities) * shapes, runs
        assert Counter(identity for identity, _, _ in runs) == dict.fromkeys(
            identities, shapes
        )
        owner = {sub_id: s.identity for s in subs for sub_id in s.subs.values()}
        assert all(owner[sub_id] == identity for identity, _, sub_id in runs)

    def check(
        told: list[dict[str, Note]],
        row: Row,
        expected: dict[str, tuple[str, str | None]],
    ) -> None:
        masked = {**row, "email": "***"}
        narrow = {"id": row["id"], "name": row["name"], "email": "***"}
        for per_kind in told:
            for kind, (operation, change) in expected.items():
                note = per_kind[kind]
                assert note["operation"] == operation
                assert note["metadata"].get("change") == change
                assert note["data"] == (narrow if kind == "narrow" else masked)

    # create: two shapes (all columns, the narrow ones); the filtered subscriptions
    # are told what the unfiltered ones are told.
    row = await writer.ok(
        "create", "users", data={"name": "Ann", "email": "a@x.org", "status": "active"}
    )
    told = await each_told(subs)
    check(told, row, {k: ("create", None) for k in ("all", "narrow", "active")})
    check_runs(2)

    # leave: stay for two shapes, leave for the filtered ones.
    old, row = (
        row,
        await writer.ok(
            "update", "users", record_id=row["id"], data={"status": "away"}
        ),
    )
    told = await each_told(subs)
    check(
        told,
        row,
        {"all": ("update", "stay"), "narrow": ("update", "stay")},
    )
    for per_kind in told:  # the row as it was, masked
        assert per_kind["active"]["operation"] == "delete"
        assert per_kind["active"]["metadata"]["change"] == "leave"
        assert per_kind["active"]["data"] == {**old, "email": "***"}
    check_runs(3)

    # enter, then a stay for everyone, then a delete.
    row = await writer.ok(
        "update", "users", record_id=row["id"], data={"status": "active"}
    )
    told = await each_told(subs)
    check(
        told,
        row,
        {
            "all": ("update", "stay"),
            "narrow": ("update", "stay"),
            "active": ("create", "enter"),
        },
    )
    check_runs(3)
    row = await writer.ok("update", "users", record_id=row["id"], data={"age": 7})
    told = await each_told(subs)
    check(told, row, {k: ("update", "stay") for k in ("all", "narrow", "active")})
    check_runs(2)
    await writer.ok("delete", "users", record_id=row["id"])
    told = await each_told(subs)
    check(told, row, {k: ("delete", None) for k in ("all", "narrow", "active")})
    check_runs(2)

    await nothing_more(subs)
    # Every subscription got exactly one notification per change, in order.
    for s in subs:
        for sub_id in s.subs.values():
            seqs = [
                n["metadata"]["seq"] for n in s.notes if n["subscription_id"] == sub_id
            ]
            assert len(seqs) == 5
            assert seqs == sorted(set(seqs))


# -- identity-dependent results -------------------------------------------------------


async def test_each_identity_gets_its_own_result(
    handler: Handler, connect: Connect
) -> None:
    identify(handler)
    runs: Counter[Any] = Counter()

    @handler.hooks.after(HookType.READ, per_identity=True)
    def per_viewer(ctx: HookContext) -> None:
        if ctx.subscription_id is None or not isinstance(ctx.result, dict):
            return
        viewer = ctx.connection.metadata.get("user_id")
        runs[viewer] += 1
        ctx.result["viewer"] = viewer
        if viewer != ctx.result.get("name"):  # only the row's own user sees its email
            mask(ctx.result)

    subs = await subscribers(connect, ("ann", "bob", None), ("all", "narrow"), 3)
    writer = await connect()
    ann = await writer.ok("create", "users", data={"name": "ann", "email": "a@x.org"})
    bob = await writer.ok("create", "users", data={"name": "bob", "email": "b@x.org"})

    for row in (ann, bob):
        told = await each_told(subs)
        for s, per_kind in zip(subs, told, strict=True):
            email = row["email"] if s.identity == row["name"] else "***"
            assert per_kind["all"]["data"] == {
                **row,
                "email": email,
                "viewer": s.identity,
            }
            assert per_kind["narrow"]["data"] == {
                "id": row["id"],
                "name": row["name"],
                "email": email,
                "viewer": s.identity,
            }
    await nothing_more(subs)
    # Two changes, two shapes: four runs per identity, not one per subscription (12).
    assert runs == {"ann": 4, "bob": 4, None: 4}


def by_tenant(conn: Any) -> Any:
    return conn.metadata.get("tenant")


@pytest.mark.parametrize("config", [Config(identity=by_tenant)])
async def test_a_custom_identity_groups_connections_by_it(
    handler: Handler, connect: Connect
) -> None:
    """``Config.identity`` decides who shares a run (here: the tenant)."""
    identify(handler)
    tenants: list[Any] = []

    @handler.hooks.after(HookType.READ, per_identity=True)
    def tenant_hook(ctx: HookContext) -> None:
        if ctx.subscription_id is None or not isinstance(ctx.result, dict):
            return
        tenant = ctx.connection.metadata.get("tenant")
        tenants.append(tenant)
        ctx.result["tenant"] = tenant

    people = [("u1", "t1"), ("u2", "t1"), ("u3", "t1"), ("u4", "t2"), ("u5", "t2")]
    clients = []
    for user, tenant in people:
        client = await connect(additional_headers={"X-User": user, "X-Tenant": tenant})
        clients.append((tenant, client, await client.subscribe("users")))
    writer = await connect()
    await writer.ok("create", "users", data={"name": "Ann"})
    for tenant, client, sub_id in clients:
        note = await client.notification()
        assert note["subscription_id"] == sub_id
        assert note["data"]["tenant"] == tenant
        assert await client.drain() == []
    assert sorted(tenants) == ["t1", "t2"]


# -- withholding ----------------------------------------------------------------------


async def test_withholding_withholds_from_that_identity_only(
    handler: Handler, connect: Connect
) -> None:
    identify(handler)
    runs: Counter[Any] = Counter()

    @handler.hooks.after(HookType.READ, per_identity=True)
    def guard(ctx: HookContext) -> None:
        if ctx.subscription_id is None or not isinstance(ctx.result, dict):
            return
        viewer = ctx.connection.metadata.get("user_id")
        runs[viewer] += 1
        if ctx.result["name"] != "secret":
            return
        if viewer == "bob":
            raise UnauthorizedError("not for bob")  # a ProtocolError
        if viewer == "carol":
            raise RuntimeError("a bug")  # a foreign error: hook_error, withheld
        if viewer is None:
            ctx.result = None  # withholds too

    identities = ("ann", "bob", "carol", None)
    subs = await subscribers(connect, identities, ("all", "narrow"), 2)
    writer = await connect()
    secret = await writer.ok("create", "users", data={"name": "secret"})
    public = await writer.ok("create", "users", data={"name": "public"})

    for s in subs:
        # Changes are delivered in order: once "public" is here, "secret" was handled.
        expected = [secret, public] if s.identity == "ann" else [public]
        per_change = [s.by_kind(await s.take(len(s.subs))) for _ in expected]
        for per_kind, row in zip(per_change, expected, strict=True):
            assert per_kind["all"]["data"] == row
            assert per_kind["narrow"]["data"] == {
                "id": row["id"],
                "name": row["name"],
                "email": None,
            }
    await nothing_more(subs)
    assert runs == dict.fromkeys(identities, 4)  # 2 changes x 2 shapes


# -- hooks not declared per identity --------------------------------------------------


@pytest.mark.parametrize("declared", ["none", "some"])
async def test_undeclared_hooks_still_run_once_per_subscriber(
    handler: Handler, connect: Connect, declared: str
) -> None:
    identify(handler)
    runs: dict[str, list[str]] = {"plain": [], "per identity": []}

    def counter(name: str) -> Callable[[HookContext], None]:
        def hook(ctx: HookContext) -> None:
            if ctx.subscription_id is not None:
                runs[name].append(ctx.subscription_id)
                mask(ctx.result)

        return hook

    if declared == "some":
        handler.hooks.register_after(
            HookType.READ, counter("per identity"), per_identity=True
        )
    handler.hooks.register_after(HookType.READ, counter("plain"))

    subs = await subscribers(connect, ("ann", None), ("all", "narrow"), 3)
    ids = sorted(sub_id for s in subs for sub_id in s.subs.values())
    writer = await connect()
    row = await writer.ok("create", "users", data={"name": "Ann", "email": "a@x"})
    told = await each_told(subs)
    for per_kind in told:
        assert per_kind["all"]["data"] == {**row, "email": "***"}
    await nothing_more(subs)
    # One hook not declared: the whole chain runs per subscriber, on its own copy.
    assert sorted(runs["plain"]) == ids
    assert sorted(runs["per identity"]) == (ids if declared == "some" else [])


# -- exactly once through a replay ----------------------------------------------------


async def test_a_resumed_subscription_gets_each_change_once_in_order(
    handler: Handler, connect: Connect
) -> None:
    """Live changes racing a replay are held, then released without duplicates."""
    identify(handler)
    handler.hooks.register_after(
        HookType.READ, lambda ctx: mask(ctx.result), per_identity=True
    )
    witness = await connect(additional_headers={"X-User": "bob"})
    others = [await connect(additional_headers={"X-User": "bob"}) for _ in range(3)]
    for client in (witness, *others):
        await client.subscribe("users")
    subscriber = await connect(additional_headers={"X-User": "bob"})
    first = await subscriber.call(
        {"type": "subscription", "operation": "subscribe", "entity": "users"}
    )
    epoch = first["data"]["position"]["epoch"]
    writers = [await connect() for _ in range(3)]

    async def write(count: int, tag: str) -> None:
        async def one(i: int, writer: WSClient) -> None:
            for j in range(i, count, len(writers)):
                await writer.ok("create", "users", data={"name": f"{tag}{j}"})

        await asyncio.gather(*(one(i, w) for i, w in enumerate(writers)))

    await write(6, "a")
    seen = [await subscriber.notification() for _ in range(6)]
    last = max(n["metadata"]["seq"] for n in seen)
    await subscriber.close()
    await write(60, "b")  # while it is away

    resumed = await connect(additional_headers={"X-User": "bob"})
    racing = asyncio.create_task(write(60, "c"))
    again = await resumed.call(
        {
            "type": "subscription",
            "operation": "subscribe",
            "entity": "users",
            "options": {"resume_from": {"seq": last, "epoch": epoch}},
        }
    )
    assert again["data"]["resumed"] is True
    await racing
    await writers[0].ok("create", "users", data={"name": "marker"})

    async def until_marker(client: WSClient) -> list[Note]:
        out: list[Note] = []
        async with asyncio.timeout(TIMEOUT):
            while not out or out[-1]["data"]["name"] != "marker":
                out.append(await client.notification())
        return out

    got = await until_marker(resumed)
    watched = await until_marker(witness)
    assert await resumed.drain() == []

    def essence(notes: list[Note]) -> list[tuple[int, str, str]]:
        return [
            (n["metadata"]["seq"], n["operation"], n["data"]["name"]) for n in notes
        ]

    expected = [n for n in watched if n["metadata"]["seq"] > last]
    assert len(expected) == 121
    assert essence(got) == essence(expected)
    assert {n["subscription_id"] for n in got} == {again["data"]["subscription_id"]}
    assert all(n["data"]["email"] == "***" for n in got)
