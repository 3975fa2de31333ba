"""A first round trip over each database: create, read back, and be notified."""

from __future__ import annotations

from tests.support.wsclient import WSClient


async def test_create_read_notify(client: WSClient) -> None:
    sub = await client.subscribe("users")
    created = await client.ok(
        "create", "users", data={"name": "Ann", "email": "ann@example.com"}
    )
    assert created["name"] == "Ann"
    assert created["status"] == "active"  # a database default shows in the re-read row
    note = await client.notification()
    assert note["subscription_id"] == sub
    assert note["operation"] == "create"
    assert note["data"] == created
    rows = await client.ok("read", "users")
    assert rows == [created]
