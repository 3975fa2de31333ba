"""The client's bookkeeping, fed messages by hand: no socket, no event loop."""

from __future__ import annotations

from typing import Any

import pytest

from websocketspec.protocol.correlation import (
    Abandoned,
    Correlation,
    ErrorReply,
    Notify,
    Position,
    Reply,
    SubscriptionStatus,
    TokenExpired,
    Unroutable,
    build_options,
    error_of,
    normalize_record_id,
)
from websocketspec.protocol.messages import FilterOption, SortOption


def ok(msg_id: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": msg_id, "type": "response", "success": True, "data": data, **extra}


def failed(
    msg_id: str, code: str, message: str = "no", **details: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"id": msg_id, "type": "response", "success": False, "error": error}


def note(
    server_id: str | None,
    operation: str = "create",
    data: Any = None,
    **metadata: Any,
) -> dict[str, Any]:
    return {
        "type": "notification",
        "operation": operation,
        "subscription_id": server_id,
        "schema": "public",
        "entity": "users",
        "data": data,
        "metadata": metadata,
    }


def subscribed(
    corr: Correlation, msg_id: str, server_id: str, **data: Any
) -> list[Any]:
    return corr.receive(ok(msg_id, {"subscription_id": server_id, **data}))


# -- ids and requests -----------------------------------------------------------------


def test_ids_are_unique_and_prefixed() -> None:
    corr = Correlation(prefix="app-")
    assert [corr.next_id() for _ in range(3)] == ["app-1", "app-2", "app-3"]


def test_a_request_is_built_exactly_as_the_wire_wants() -> None:
    corr = Correlation()
    message = corr.request(
        "update",
        "users",
        schema="public",
        record_id=7,
        data={"name": "Ann"},
        options={"filters": []},
    )
    assert message == {
        "id": "c1",
        "type": "request",
        "operation": "update",
        "schema": "public",
        "entity": "users",
        "record_id": "7",
        "data": {"name": "Ann"},
        "options": {"filters": []},
    }
    assert corr.pending["c1"].operation == "update"


def test_absent_fields_are_not_sent() -> None:
    corr = Correlation()
    assert corr.request("meta", "users") == {
        "id": "c1",
        "type": "request",
        "operation": "meta",
        "entity": "users",
    }


def test_record_ids() -> None:
    assert normalize_record_id(5) == "5"
    assert normalize_record_id("abc") == "abc"
    assert normalize_record_id({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    for bad in (None, True):
        with pytest.raises(TypeError, match="expected a record id"):
            normalize_record_id(bad)


def test_a_reply_wakes_its_request_once() -> None:
    corr = Correlation()
    message = corr.request("read", "users")
    [reply] = corr.receive(
        ok(message["id"], [{"id": 1}], metadata={"total": 1, "count": 1})
    )
    assert isinstance(reply, Reply)
    assert reply.success and reply.error is None
    assert reply.data == [{"id": 1}]
    assert reply.metadata == {"total": 1, "count": 1}
    assert corr.pending == {}
    [again] = corr.receive(ok(message["id"], []))
    assert isinstance(again, Unroutable)
    assert again.reason == "no request is waiting for this id"


def test_a_failed_reply_carries_the_error() -> None:
    corr = Correlation()
    message = corr.request("create", "users", data={})
    [reply] = corr.receive(
        failed(message["id"], "validation_error", "Email is required", field="email")
    )
    assert isinstance(reply, Reply)
    assert reply.success is False
    assert reply.error == ErrorReply(
        "validation_error", "Email is required", {"field": "email"}
    )
    assert reply.metadata == {}


def test_odd_error_shapes_still_give_an_error() -> None:
    assert error_of({"success": False}) == ErrorReply(
        "unknown_error", "the server answered success: false"
    )
    assert error_of({"error": {"code": None}}) == ErrorReply("unknown_error", "")


def test_ping_is_answered_by_pong() -> None:
    corr = Correlation()
    message = corr.ping()
    assert message == {"id": "c1", "type": "ping"}
    [reply] = corr.receive({"type": "pong", "id": "c1", "timestamp": "…Z"})
    assert isinstance(reply, Reply)
    assert reply.pending.operation == "ping"
    assert reply.success


def test_auth_is_an_internal_request() -> None:
    corr = Correlation()
    message = corr.auth("tok")
    assert message == {
        "id": "c1",
        "type": "request",
        "operation": "auth",
        "data": {"token": "tok"},
    }
    assert corr.pending["c1"].internal
    assert corr.connection_lost() == []


def test_forget_drops_a_pending_request() -> None:
    corr = Correlation()
    message = corr.request("read", "users")
    record = corr.forget(message["id"])
    assert record is not None and record.id == message["id"]
    assert corr.forget(message["id"]) is None
    [late] = corr.receive(ok(message["id"], []))
    assert isinstance(late, Unroutable)


def test_track_gives_ids_and_refuses_duplicates() -> None:
    corr = Correlation()
    message: dict[str, Any] = {"type": "ping"}
    corr.track(message)
    assert message["id"] == "c1"
    with pytest.raises(ValueError, match="already pending"):
        corr.track({"id": "c1", "type": "ping"})
    with pytest.raises(TypeError, match="string id"):
        corr.track({"id": 5, "type": "ping"})


def test_unexpected_inbound_messages() -> None:
    corr = Correlation()
    [not_object] = corr.receive([1, 2])
    assert isinstance(not_object, Unroutable)
    [odd] = corr.receive({"type": "request"})
    assert isinstance(odd, Unroutable)
    assert "unexpected message type" in odd.reason
    [numeric] = corr.receive({"type": "response", "id": 3, "success": True})
    assert isinstance(numeric, Unroutable)


def test_connection_lost_returns_what_callers_wait_for() -> None:
    corr = Correlation()
    read = corr.request("read", "users")
    corr.auth("tok")
    corr.subscribe("users")
    lost = corr.connection_lost()
    assert [record.id for record in lost] == [read["id"]]
    assert corr.pending == {}


# -- options --------------------------------------------------------------------------


def test_build_options_accepts_every_form() -> None:
    options = build_options(
        {"limit": 5, "columns": ["x"]},
        filters=[
            ("status", "eq", "active"),
            ("email", "is_null"),
            {"column": "age", "operator": "gt", "value": 3, "logic_operator": "OR"},
            FilterOption("name", "like", "A%"),
        ],
        columns=["id", "name"],
        sort=["name", "-id", {"column": "age", "direction": "desc"}, SortOption("x")],
        limit=10,
        offset=20,
        preload=[{"relation": "posts", "limit": 2}],
    )
    assert options == {
        "limit": 10,
        "columns": ["id", "name"],
        "filters": [
            {"column": "status", "operator": "eq", "value": "active"},
            {"column": "email", "operator": "is_null"},
            {"column": "age", "operator": "gt", "value": 3, "logic_operator": "OR"},
            {"column": "name", "operator": "like", "value": "A%"},
        ],
        "sort": [
            {"column": "name", "direction": "asc"},
            {"column": "id", "direction": "desc"},
            {"column": "age", "direction": "desc"},
            {"column": "x"},
        ],
        "offset": 20,
        "preload": [{"relation": "posts", "limit": 2}],
    }


def test_build_options_single_sort_and_nothing() -> None:
    assert build_options(sort="-name") == {
        "sort": [{"column": "name", "direction": "desc"}]
    }
    assert build_options() is None
    assert build_options({}) is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"options": [1]}, TypeError, "options to be a mapping"),
        ({"filters": [("a",)]}, ValueError, "expected a filter"),
        ({"filters": [5]}, TypeError, "filter mapping"),
        ({"sort": [5]}, TypeError, "sort column"),
        ({"columns": "id"}, TypeError, "list of names"),
    ],
)
def test_build_options_refuses_misuse(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build_options(**kwargs)


# -- subscriptions --------------------------------------------------------------------


def test_subscribe_message_and_binding() -> None:
    corr = Correlation()
    sub, message = corr.subscribe(
        "users", schema="public", options={"filters": [{"column": "a"}]}
    )
    assert message == {
        "id": "c1",
        "type": "subscription",
        "operation": "subscribe",
        "schema": "public",
        "entity": "users",
        "options": {"filters": [{"column": "a"}]},
    }
    assert sub.key == "s1"
    assert corr.subscriptions["s1"].status is SubscriptionStatus.SUBSCRIBING
    # A notification right behind the reply is routed: the reply binds the id.
    events = corr.receive(ok("c1", {"subscription_id": "sub-a"}))
    events += corr.receive(note("sub-a", data={"id": 1}, seq=1, epoch="e"))
    assert isinstance(events[0], Reply)
    assert isinstance(events[1], Notify)
    assert events[1].key == "s1"
    assert events[1].operation == "create"
    assert sub.status is SubscriptionStatus.ACTIVE
    assert sub.server_id == "sub-a"
    assert sub.position == Position(1, "e")


def test_subscribe_without_options_sends_none() -> None:
    corr = Correlation()
    _, message = corr.subscribe("users")
    assert "options" not in message and "schema" not in message


def test_a_refused_first_subscribe_closes_the_subscription() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    [reply] = corr.receive(failed(message["id"], "unauthorized"))
    assert isinstance(reply, Reply)
    assert reply.error is not None and reply.error.code == "unauthorized"
    assert sub.status is SubscriptionStatus.CLOSED
    assert corr.subscriptions == {}


def test_a_subscribe_answer_without_an_id_is_a_failure() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    [reply] = corr.receive(ok(message["id"], {"nothing": True}))
    assert isinstance(reply, Reply)
    assert sub.status is SubscriptionStatus.CLOSED


def test_notifications_for_unknown_or_ended_subscriptions_are_dropped() -> None:
    corr = Correlation()
    [unknown] = corr.receive(note("sub-x"))
    assert isinstance(unknown, Unroutable)
    sub, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a")
    unsubscribe = corr.unsubscribe(sub.key)
    assert unsubscribe == {
        "id": "c2",
        "type": "subscription",
        "operation": "unsubscribe",
        "subscription_id": "sub-a",
    }
    [late] = corr.receive(note("sub-a"))
    assert isinstance(late, Unroutable)
    [answer] = corr.receive(ok("c2", {"unsubscribed": True}))
    assert isinstance(answer, Reply)
    assert answer.pending.subscription == sub.key
    assert corr.unsubscribe(sub.key) is None


def test_connection_level_notifications() -> None:
    corr = Correlation()
    [expired] = corr.receive(note(None, "token_expired", data={"grace_period": 30}))
    assert isinstance(expired, TokenExpired)
    assert expired.grace_period == 30.0
    [no_grace] = corr.receive(note(None, "token_expired", data=None))
    assert isinstance(no_grace, TokenExpired) and no_grace.grace_period is None
    [other] = corr.receive(note(None, "maintenance"))
    assert isinstance(other, Unroutable)


def test_revoked_ends_the_subscription() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a")
    [revoked] = corr.receive(note("sub-a", "revoked", reason="unauthorized"))
    assert isinstance(revoked, Notify) and revoked.final
    assert sub.status is SubscriptionStatus.CLOSED
    assert corr.resubscribe() == []


def test_revoked_for_an_expired_token_detaches_for_the_reconnect() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a")
    assert corr.receive(note("sub-a", "revoked", reason="token_expired")) == []
    assert sub.status is SubscriptionStatus.DETACHED
    corr.connection_lost()
    [again] = corr.resubscribe()
    [_, gap] = subscribed(corr, again["id"], "sub-b")
    assert isinstance(gap, Notify) and gap.operation == "reset"


def test_duplicates_are_dropped_by_position() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a")
    assert len(corr.receive(note("sub-a", seq=3, epoch="e1"))) == 1
    assert corr.receive(note("sub-a", seq=3, epoch="e1")) == []
    assert corr.receive(note("sub-a", seq=2, epoch="e1")) == []
    assert corr.duplicates == 2
    # Another epoch starts over: seq 1 is new.
    assert len(corr.receive(note("sub-a", seq=1, epoch="e2"))) == 1
    assert sub.position == Position(1, "e2")
    # Without a position (no seq), nothing is deduplicated.
    assert len(corr.receive(note("sub-a"))) == 1
    assert len(corr.receive(note("sub-a"))) == 1


def test_a_server_reset_is_passed_on_and_forgets_the_position() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a")
    corr.receive(note("sub-a", seq=4, epoch="e"))
    [reset] = corr.receive(note("sub-a", "reset", reason="gap"))
    assert isinstance(reset, Notify) and reset.operation == "reset"
    assert not reset.final
    assert sub.position is None


def test_resubscribe_resumes_from_the_last_position() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users", options={"filters": [], "snapshot": True})
    subscribed(corr, message["id"], "sub-a", rows=[], position={"seq": 0, "epoch": "e"})
    assert sub.position == Position(0, "e")
    assert sub.snapshot == []
    corr.receive(note("sub-a", seq=5, epoch="e"))
    assert corr.connection_lost() == []
    assert sub.status is SubscriptionStatus.DETACHED and sub.server_id is None
    [late] = corr.receive(note("sub-a", seq=6, epoch="e"))
    assert isinstance(late, Unroutable)

    [again] = corr.resubscribe()
    assert again["options"] == {"filters": [], "resume_from": {"seq": 5, "epoch": "e"}}
    assert corr.pending[again["id"]].internal
    # The server says it resumed: no client-side reset; its replay follows, and the
    # head position in the reply does not swallow it.
    events = subscribed(
        corr, again["id"], "sub-b", resumed=True, position={"seq": 9, "epoch": "e"}
    )
    assert [type(e) for e in events] == [Reply]
    assert sub.position == Position(5, "e")
    [replayed] = corr.receive(note("sub-b", seq=6, epoch="e"))
    assert isinstance(replayed, Notify) and replayed.key == sub.key


def test_resubscribe_without_replay_tells_the_caller() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users", options={"snapshot": True})
    subscribed(corr, message["id"], "sub-a")
    corr.receive(note("sub-a", seq=2, epoch="e"))
    corr.connection_lost()
    [again] = corr.resubscribe()
    assert again["options"] == {"resume_from": {"seq": 2, "epoch": "e"}}
    # An older server ignores resume_from: nothing in the reply says it resumed.
    [reply, gap] = subscribed(corr, again["id"], "sub-b")
    assert isinstance(reply, Reply)
    assert isinstance(gap, Notify) and gap.key == sub.key
    assert gap.message["operation"] == "reset"
    assert gap.message["subscription_id"] == "sub-b"
    assert gap.message["metadata"]["reason"] == "reconnected"
    assert gap.message["data"] is None
    assert sub.server_id == "sub-b"


def test_resubscribe_without_a_position_keeps_a_snapshot_for_the_gap() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users", options={"snapshot": True})
    subscribed(corr, message["id"], "sub-a")
    corr.connection_lost()
    [again] = corr.resubscribe()
    assert again["options"] == {"snapshot": True}
    [_, gap] = subscribed(
        corr, again["id"], "sub-b", rows=[{"id": 1}], position={"seq": 3, "epoch": "f"}
    )
    assert isinstance(gap, Notify)
    assert gap.message["data"] == {"rows": [{"id": 1}]}
    assert sub.position == Position(3, "f")


def test_resume_can_be_turned_off() -> None:
    corr = Correlation(resume=False)
    sub, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a")
    corr.receive(note("sub-a", seq=2, epoch="e"))
    corr.connection_lost()
    [again] = corr.resubscribe()
    assert "options" not in again
    assert sub.resuming is False


def test_a_refused_resubscribe_ends_the_subscription_with_a_notice() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a")
    corr.connection_lost()
    [again] = corr.resubscribe()
    [reply, ended] = corr.receive(failed(again["id"], "model_not_found", "gone"))
    assert isinstance(reply, Reply)
    assert isinstance(ended, Notify) and ended.final
    assert ended.message["operation"] == "revoked"
    assert ended.message["metadata"] == {"reason": "model_not_found", "message": "gone"}
    assert sub.status is SubscriptionStatus.CLOSED


def test_a_subscribe_in_flight_when_the_connection_dies_is_sent_again() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    assert corr.connection_lost() == []
    [late] = corr.receive(ok(message["id"], {"subscription_id": "sub-old"}))
    assert isinstance(late, Unroutable)
    [again] = corr.resubscribe()
    # Never active before: a first subscription, not a gap.
    events = subscribed(corr, again["id"], "sub-a")
    assert [type(e) for e in events] == [Reply]
    assert sub.status is SubscriptionStatus.ACTIVE


def test_a_reply_to_a_superseded_subscribe_is_not_bound() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    # The same subscription re-sent (as after a reconnect) without the old reply.
    corr.connection_lost()
    corr.resubscribe()
    corr.track(
        {"id": message["id"], "type": "subscription", "operation": "subscribe"},
        subscription=sub.key,
    )
    [reply] = subscribed(corr, message["id"], "sub-stale")
    assert isinstance(reply, Reply)
    assert sub.server_id is None
    # Nor is one for a subscription that no longer exists.
    corr.track(
        {"id": "x1", "type": "subscription", "operation": "subscribe"},
        subscription="s99",
    )
    [reply] = subscribed(corr, "x1", "sub-gone")
    assert isinstance(reply, Reply)


def test_an_abandoned_subscribe_that_succeeds_late_is_unsubscribed() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    assert corr.unsubscribe(sub.key) is None  # not active yet: nothing to send
    [orphan] = subscribed(corr, message["id"], "sub-orphan")
    assert orphan == Abandoned("sub-orphan")
    drop = corr.unsubscribe_orphan("sub-orphan")
    assert drop["subscription_id"] == "sub-orphan"
    assert corr.pending[drop["id"]].internal
    # A refused abandoned subscribe leaves nothing to do.
    sub2, message2 = corr.subscribe("users")
    corr.unsubscribe(sub2.key)
    assert corr.receive(failed(message2["id"], "unauthorized")) == []


def test_close_ends_everything() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a")
    corr.request("read", "users")
    assert corr.close() == [sub]
    assert sub.status is SubscriptionStatus.CLOSED
    assert corr.pending == {} and corr.subscriptions == {}
    [late] = corr.receive(note("sub-a"))
    assert isinstance(late, Unroutable)


def test_positions_on_the_wire() -> None:
    assert Position(3, "e").to_wire() == {"seq": 3, "epoch": "e"}
    assert Position.from_wire({"seq": 3, "epoch": "e"}) == Position(3, "e")
    assert Position.from_wire({"seq": 3}) == Position(3, None)
    assert Position.from_wire({"seq": True}) is None
    assert Position.from_wire({"seq": "3"}) is None
    assert Position.from_wire(None) is None


def test_a_server_that_knows_positions_is_trusted_to_resume() -> None:
    corr = Correlation()
    sub, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a", position={"seq": 4, "epoch": "e"})
    assert corr.server_resumes
    assert sub.position == Position(4, "e")
    corr.connection_lost()
    [again] = corr.resubscribe()
    assert again["options"] == {"resume_from": {"seq": 4, "epoch": "e"}}
    # Its answer to a resume need not say so: it replays, or sends reset.
    assert [type(e) for e in subscribed(corr, again["id"], "sub-b")] == [Reply]
    [reset] = corr.receive(note("sub-b", "reset", reason="history replaced"))
    assert isinstance(reset, Notify) and reset.key == sub.key
    assert len(corr.receive(note("sub-b", seq=1, epoch="f"))) == 1


def test_an_explicit_resumed_flag_is_trusted() -> None:
    corr = Correlation()
    _, message = corr.subscribe("users")
    subscribed(corr, message["id"], "sub-a")
    corr.receive(note("sub-a", seq=2, epoch="e"))
    corr.connection_lost()
    [again] = corr.resubscribe()
    assert [type(e) for e in subscribed(corr, again["id"], "sub-b", resumed=True)] == [
        Reply
    ]
    assert not corr.server_resumes
