"""The Python client against the quickstart: CRUD, a live subscription, an error.

Start the server (``python examples/quickstart.py``), then run
``python examples/client_python.py`` (``--url ws://host:port/ws`` for another server,
``--token T`` to send a bearer token).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

from websocketspec.client import ServerError, Subscription, connect

TIMEOUT = 10.0


async def pushed(sub: Subscription) -> None:
    """Print the subscription's next notification."""
    change = await asyncio.wait_for(anext(sub), TIMEOUT)
    print(f"pushed: {change.operation} {change.data}")


async def main(url: str, token: str | None) -> None:
    async with connect(url, token=token, request_timeout=TIMEOUT) as client:
        meta = await client.meta("users")
        print("users columns:", [column["name"] for column in meta["columns"]])

        # Changes to active users, pushed as they happen.
        async with client.subscribe(
            "users", filters=[("status", "eq", "active")]
        ) as active:
            email = f"ann-{uuid.uuid4().hex[:8]}@example.com"
            ann = await client.create("users", {"name": "Ann", "email": email})
            print("created:", ann)
            await pushed(active)  # create

            await client.update("users", ann["id"], {"name": "Ann Smith"})
            await pushed(active)  # update (the row stays in the filter)

            await client.update("users", ann["id"], {"status": "inactive"})
            await pushed(active)  # delete: the row left the filter

            page = await client.read_page(
                "users", filters=[("name", "startswith", "Ann")], sort="-id", limit=5
            )
            print(f"{page.total} users named Ann*, first page: {page.rows}")

            post = await client.create(
                "posts", {"title": "Hello", "content": "…", "user_id": ann["id"]}
            )
            [with_author] = await client.read(
                "posts",
                filters=[("id", "eq", post["id"])],
                preload=[{"relation": "user", "columns": ["id", "name"]}],
            )
            print("post with its author:", with_author)
            await client.delete("posts", post["id"])
            await client.delete("users", ann["id"])

        try:
            await client.read("users", ann["id"])
        except ServerError as exc:
            print(f"read after delete: {exc.code} ({exc.message})")


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.token))


if __name__ == "__main__":
    cli()
