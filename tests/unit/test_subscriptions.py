"""What each subscriber of one change is told, on the fan-out's synchronous path.

The fan-out works out once what every unfiltered subscriber of one column set is told,
and encodes once per shape; these tests hold each subscriber's frame to what it would
be told alone: its own subscription id, its columns, its filter's verdict (enter,
stay, leave), nothing at or before its stream position, and nothing live while its
replay runs.
"""

from __future__ import annotations

from tests.support.fanout import World, status_is
from websocketspec.adapters.base import Change

ANN = {"id": 1, "name": "Ann", "status": "active"}
ANN_AWAY = {"id": 1, "name": "Ann", "status": "away"}


def test_each_subscriber_is_told_what_it_would_be_told_alone() -> None:
    world = World()
    world.subscribe("sub-all")
    world.subscribe("sub-all2")
    world.subscribe("sub-names", columns=("name",))
    world.subscribe("sub-active", where=status_is("active"))
    world.subscribe("sub-away", where=status_is("away"))
    world.subscribe("sub-later", since=5)

    world.fanout.deliver(Change("update", "public.users", ANN, ANN_AWAY, seq=5))

    for sub_id in ("sub-all", "sub-all2"):
        (frame,) = world.told(sub_id)
        assert frame["subscription_id"] == sub_id
        assert frame["operation"] == "update"
        assert frame["data"] == ANN_AWAY
        assert frame["metadata"]["change"] == "stay"
        assert frame["metadata"]["seq"] == 5
    (names,) = world.told("sub-names")
    assert names["subscription_id"] == "sub-names"
    assert names["data"] == {"name": "Ann", "id": 1}
    (left,) = world.told("sub-active")
    assert (left["operation"], left["metadata"]["change"]) == ("delete", "leave")
    assert left["data"] == ANN
    (entered,) = world.told("sub-away")
    assert (entered["operation"], entered["metadata"]["change"]) == (
        "create",
        "enter",
    )
    assert world.told("sub-later") == []  # at or before its position
    assert world.fanout.delivered == 5


def test_a_change_for_nobody_sends_nothing_and_a_replay_holds_live_changes() -> None:
    world = World()
    world.subscribe("sub-active", where=status_is("active"))
    replaying = world.subscribe("sub-replaying")
    replaying.held = []

    world.fanout.deliver(Change("create", "public.users", None, ANN_AWAY, seq=1))

    assert world.told("sub-active") == []
    assert world.told("sub-replaying") == []
    assert replaying.held == [
        (1, "create", ANN_AWAY, {"source_operation": "create", "seq": 1, "epoch": ""})
    ]
