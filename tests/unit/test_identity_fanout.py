"""Per-identity after-read hooks: registration, the identity rule, and the fan-out path.

The fan-out is driven directly (``_deliver_hooked``, what its worker runs for each
change) over real :class:`Connection` objects whose sinks record frames, so that what a
subscription is told can be compared with what the per-subscriber path tells it, and
so that an async hook can be held mid-change while subscriptions change under it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.support.fanout import HANDSHAKE, World, status_is
from websocketspec import Config, HookContext, HookType, UnauthorizedError
from websocketspec.adapters.base import Change
from websocketspec.hooks import HookRegistry
from websocketspec.server.connection import Connection

ANN = {"id": 1, "name": "Ann", "email": "a@x.org", "status": "active"}
ANN_AWAY = {**ANN, "status": "away"}
TIMEOUT = 5.0


def noop(ctx: HookContext) -> None:
    pass


# -- registration and the identity rule -----------------------------------------------


def test_per_identity_holds_while_every_after_read_hook_is_declared() -> None:
    hooks = HookRegistry()
    assert not hooks.is_after_per_identity(HookType.READ)
    hooks.after(HookType.READ, per_identity=True)(noop)
    hooks.register_after(HookType.READ, noop, per_identity=True)
    assert hooks.is_after_per_identity(HookType.READ)
    hooks.register_before(HookType.READ, noop)  # before hooks are not concerned
    assert hooks.is_after_per_identity(HookType.READ)
    hooks.register_after(HookType.READ, noop)
    assert not hooks.is_after_per_identity(HookType.READ)
    hooks.register_after(HookType.READ, noop, per_identity=True)
    assert not hooks.is_after_per_identity(HookType.READ)
    hooks.clear()
    assert not hooks.is_after_per_identity(HookType.READ)
    hooks.register_after(HookType.READ, noop, per_identity=True)
    assert hooks.is_after_per_identity(HookType.READ)


@pytest.mark.parametrize("hook_type", [t for t in HookType if t is not HookType.READ])
def test_per_identity_is_refused_for_other_hook_types(hook_type: HookType) -> None:
    hooks = HookRegistry()
    with pytest.raises(ValueError, match="after-read hooks only"):
        hooks.register_after(hook_type, noop, per_identity=True)
    with pytest.raises(ValueError, match="after-read hooks only"):
        hooks.after(hook_type, per_identity=True)(noop)
    assert not hooks.has_after(hook_type)


def test_identity_of_is_config_identity_else_user_id() -> None:
    conn = Connection(HANDSHAKE, max_queue=10, max_queue_bytes=1 << 20)
    assert Config().identity_of(conn) is None
    conn.metadata["user_id"] = 7
    conn.metadata["tenant"] = "t1"
    assert Config().identity_of(conn) == 7
    by_tenant = Config(identity=lambda c: c.metadata["tenant"])
    assert by_tenant.identity_of(conn) == "t1"


# -- the fan-out ----------------------------------------------------------------------


def populate(world: World) -> None:
    for user in ("ann", "bob", None):
        for n in range(3):
            world.subscribe(f"sub-{user}-all-{n}", user)
            world.subscribe(f"sub-{user}-names-{n}", user, columns=("name", "email"))
            world.subscribe(f"sub-{user}-active-{n}", user, where=status_is("active"))
            world.subscribe(f"sub-{user}-away-{n}", user, where=status_is("away"))
        world.subscribe(f"sub-{user}-later", user, since=2)


CHANGES = [
    Change("create", "public.users", None, ANN, seq=1),
    Change("update", "public.users", ANN, ANN_AWAY, seq=2),
    Change("update", "public.users", ANN_AWAY, ANN, seq=3),
    Change("update", "public.users", ANN, {**ANN, "name": "Ann B"}, seq=4),
    Change("delete", "public.users", {**ANN, "name": "Ann B"}, None, seq=5),
]


def viewer_mask(ctx: HookContext) -> None:
    """An identity-dependent hook: bob sees no email; each copy names its viewer."""
    viewer = ctx.connection.metadata.get("user_id")
    if viewer == "bob":
        ctx.result["email"] = "***"
    ctx.result["viewer"] = viewer


async def test_per_identity_frames_equal_per_subscriber_frames() -> None:
    """Grouped or not, every subscription is told the same, except for timestamps."""
    told: list[dict[str, list[dict[str, Any]]]] = []
    runs = []
    for per_identity in (False, True):
        world = World()
        calls: list[str | None] = []

        def hook(ctx: HookContext, calls: list[str | None] = calls) -> None:
            calls.append(ctx.subscription_id)
            viewer_mask(ctx)

        world.hooks.register_after(HookType.READ, hook, per_identity=per_identity)
        populate(world)
        for change in CHANGES:
            await world.fanout._deliver_hooked(change)
        told.append(
            {
                sub_id: [{**f, "timestamp": None} for f in sink.frames]
                for sub_id, sink in world.sinks.items()
            }
        )
        runs.append(len(calls))
    per_subscriber, per_identity_told = told
    assert per_identity_told == per_subscriber
    # Per identity, notifications: create 9, leave/stay/enter 12, enter/stay/leave 13
    # (the "later" subscription joins), stay 10, delete 10. Shapes: 2, 4, 4, 2, 2.
    assert sum(map(len, per_subscriber.values())) == 3 * 54
    assert runs == [3 * 54, 3 * 14]


async def test_a_held_subscription_keeps_its_identitys_result() -> None:
    world = World()
    world.hooks.register_after(HookType.READ, viewer_mask, per_identity=True)
    world.subscribe("sub-live", "bob")
    held = world.subscribe("sub-held", "bob")
    held.held = []

    await world.fanout._deliver_hooked(CHANGES[0])

    (frame,) = world.told("sub-live")
    assert frame["data"] == {**ANN, "email": "***", "viewer": "bob"}
    assert world.told("sub-held") == []
    assert held.held == [
        (
            1,
            "create",
            {**ANN, "email": "***", "viewer": "bob"},
            {"source_operation": "create", "seq": 1, "epoch": ""},
        )
    ]
    assert world.fanout.delivered == 1


async def test_what_changes_while_a_hook_awaits_is_decided_at_sending() -> None:
    world = World()
    entered = asyncio.Event()
    release = asyncio.Event()
    runs: list[str | None] = []

    @world.hooks.after(HookType.READ, per_identity=True)
    async def slow(ctx: HookContext) -> None:
        runs.append(ctx.subscription_id)
        entered.set()
        await release.wait()

    subs = {name: world.subscribe(name, "ann") for name in ("a", "b", "c", "d")}
    delivering = asyncio.create_task(world.fanout._deliver_hooked(CHANGES[0]))
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    # While the hook runs: one unsubscribes, one starts a replay, one moves past it.
    del subs["b"].connection.subscriptions["b"]
    world.table.remove("b")
    subs["c"].held = []
    subs["d"].since = 1
    release.set()
    await asyncio.wait_for(delivering, TIMEOUT)

    assert len(runs) == 1
    assert [f["subscription_id"] for f in world.told("a")] == ["a"]
    assert world.told("b") == world.told("c") == world.told("d") == []
    assert subs["c"].held is not None
    assert [entry[0] for entry in subs["c"].held] == [1]


async def test_withholding_withholds_the_whole_group_only() -> None:
    world = World()

    @world.hooks.after(HookType.READ, per_identity=True)
    def guard(ctx: HookContext) -> None:
        if ctx.connection.metadata.get("user_id") == "bob":
            raise UnauthorizedError("not for bob")

    for user in ("ann", "bob"):
        for n in range(3):
            world.subscribe(f"{user}-{n}", user)

    await world.fanout._deliver_hooked(CHANGES[0])

    for n in range(3):
        assert len(world.told(f"ann-{n}")) == 1
        assert world.told(f"bob-{n}") == []


@pytest.mark.parametrize("failure", ["raises", "unhashable"])
async def test_subscribers_of_unknown_identity_get_hooks_of_their_own(
    failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    def identity(conn: Connection) -> Any:
        user = conn.metadata.get("user_id")
        if user != "odd":
            return user
        if failure == "raises":
            raise KeyError("tenant")
        return {"unhashable": True}

    world = World(identity=identity)
    runs: list[str | None] = []

    @world.hooks.after(HookType.READ, per_identity=True)
    def hook(ctx: HookContext) -> None:
        runs.append(ctx.connection.metadata.get("user_id"))

    for user in ("ann", "odd"):
        for n in range(3):
            world.subscribe(f"{user}-{n}", user)

    with caplog.at_level(logging.WARNING, "websocketspec.server.subscriptions"):
        await world.fanout._deliver_hooked(CHANGES[0])

    assert sorted(runs, key=str) == ["ann", "odd", "odd", "odd"]
    assert all(
        len(world.told(f"{u}-{n}")) == 1 for u in ("ann", "odd") for n in (0, 1, 2)
    )
    assert "the identity of 3 subscriber(s) could not be determined" in caplog.text
