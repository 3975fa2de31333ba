// Requests and typed errors against the real quickstart (examples/quickstart.py, the direct
// websockets server) over both Node WebSocket transports.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Client, ServerError, type Filter, type Page } from "websocketspec";
import { PythonServer, transports, within } from "./support.js";

interface User {
  id: number;
  name: string;
  email: string;
  status: string;
}

interface Post {
  id: number;
  title: string;
  content: string;
  user_id: number;
  user?: Pick<User, "id" | "name">;
}

let server: PythonServer;

before(async () => {
  server = await PythonServer.start({ kind: "quickstart" });
});

after(async () => {
  await server.dispose();
});

for (const transport of transports()) {
  describe(`requests over the ${transport.name}`, () => {
    let client: Client;
    const tag = transport.name.replace(/\W+/g, "-");

    before(async () => {
      client = new Client(server.url, { WebSocket: transport.WebSocket });
      await within("connect", client.connect());
      assert.equal(client.state, "open");
    });

    after(async () => {
      await client.close();
      assert.equal(client.state, "closed");
    });

    test("create, read with filters, sort and limit, read one, update, delete", async () => {
      const names = ["Carol", "alice", "Bob", "Dave"].map((name) => `${name}-${tag}`);
      const created: User[] = [];
      for (const [index, name] of names.entries()) {
        created.push(
          await client.create<User>("users", {
            name,
            email: `${name.toLowerCase()}@example.com`,
            status: index === 3 ? "inactive" : "active",
          }),
        );
      }
      for (const user of created) assert.equal(typeof user.id, "number");

      const filters: Filter<User>[] = [
        { column: "status", operator: "eq", value: "active" },
        { column: "name", operator: "endswith", value: tag },
      ];
      const active = await client.read<User>("users", {
        filters,
        sort: [{ column: "name", direction: "asc" }],
        limit: 2,
      });
      // Text sorts by code point: upper case first.
      assert.deepEqual(
        active.map((user) => user.name),
        [`Bob-${tag}`, `Carol-${tag}`],
      );

      const page: Page<User> = await client.readPage<User>("users", { filters, limit: 2, offset: 2 });
      assert.equal(page.total, 3);
      assert.equal(page.count, 1);
      assert.equal(page.limit, 2);
      assert.equal(page.offset, 2);

      const either = await client.read<User>("users", {
        filters: [
          { column: "name", operator: "eq", value: `Dave-${tag}` },
          { column: "name", operator: "ilike", value: `ALICE-${tag}`, logic_operator: "OR" },
        ],
        columns: ["id", "name"],
        sort: [{ column: "id", direction: "desc" }],
      });
      assert.deepEqual(either, [
        { id: created[3]!.id, name: `Dave-${tag}` },
        { id: created[1]!.id, name: `alice-${tag}` },
      ]);

      const ids = created.map((user) => user.id);
      const some = await client.read<User>("users", {
        filters: [
          { column: "id", operator: "in", value: ids.slice(0, 2) },
          { column: "id", operator: "between", value: [ids[1]!, ids[3]!] },
        ],
      });
      assert.deepEqual(
        some.map((user) => user.id),
        [ids[1]],
      );

      const one = await client.readOne<User>("users", String(created[0]!.id));
      assert.deepEqual(one, created[0]);

      const updated = await client.update<User>("users", created[0]!.id, { status: "away" });
      assert.deepEqual(updated, { ...created[0]!, status: "away" });

      const deleted = await client.delete<User>("users", created[0]!.id);
      assert.deepEqual(deleted, updated);
      await assert.rejects(client.readOne<User>("users", created[0]!.id), (error: unknown) => {
        assert.ok(error instanceof ServerError);
        assert.equal(error.code, "not_found");
        return true;
      });
    });

    test("preload a relation; meta describes an entity", async () => {
      const author = await client.create<User>("users", { name: `Eve-${tag}`, email: "eve@example.com" });
      assert.equal(author.status, "active", "the column's default is filled in");
      const post = await client.create<Post>("posts", { title: "Hello", user_id: author.id });
      const [withUser] = await client.read<Post>("posts", {
        filters: [{ column: "id", operator: "eq", value: post.id }],
        preload: [{ relation: "user", columns: ["id", "name"] }],
      });
      assert.deepEqual(withUser?.user, { id: author.id, name: author.name });

      const meta = await client.meta("posts");
      assert.equal(meta.schema, "public");
      assert.deepEqual(meta.primary_key, ["id"]);
      assert.deepEqual(
        meta.columns.map((column) => [column.name, column.type]),
        [
          ["id", "integer"],
          ["title", "string"],
          ["content", "string"],
          ["user_id", "integer"],
        ],
      );
      assert.equal(meta.relations[0]?.name, "user");
      assert.equal(meta.relations[0]?.kind, "one");
    });

    test("typed errors carry the server's code, message and details", async () => {
      const failures: [() => Promise<unknown>, string][] = [
        [() => client.read("nobody"), "model_not_found"],
        [() => client.create<User>("users", { name: "no email" }), "validation_error"],
        [
          () => client.read<User>("users", { filters: [{ column: "id", operator: "eq", value: "x" as unknown as number }] }),
          "invalid_filter",
        ],
        [() => client.read("users", { filters: [{ column: "nope", operator: "eq", value: 1 }] }), "invalid_column"],
        [() => client.update<User>("users", 999_999, { name: "x" }), "not_found"],
        [
          () => client.request({ type: "subscription", operation: "unsubscribe", subscription_id: "sub-none" }),
          "subscription_not_found",
        ],
        [() => client.request({ type: "request", operation: "subscribe", entity: "users" }), "invalid_operation"],
      ];
      for (const [failure, code] of failures) {
        await assert.rejects(failure(), (error: unknown) => {
          assert.ok(error instanceof ServerError, String(error));
          assert.equal(error.code, code);
          assert.equal(error.name, "ServerError");
          assert.ok(error.message.length > 0);
          return true;
        });
      }
      const missing = await client.create<User>("users", { name: "no email" }).catch((error: unknown) => error);
      assert.ok(missing instanceof ServerError);
      assert.equal(missing.field, "email");
      assert.deepEqual(missing.details, { field: "email" });
    });

    test("an idempotency key applies a write once; filters make an update conditional", async () => {
      const key = `create-once-${tag}-${Date.now()}`;
      const first = await client.create<User>("users", { name: `Ida-${tag}`, email: "ida@example.com" }, { idempotencyKey: key });
      const again = await client.create<User>("users", { name: `Ida-${tag}`, email: "ida@example.com" }, { idempotencyKey: key });
      assert.deepEqual(again, first);
      const named = await client.read<User>("users", { filters: [{ column: "name", operator: "eq", value: `Ida-${tag}` }] });
      assert.equal(named.length, 1);

      const onlyIfInactive = [{ column: "status", operator: "eq", value: "inactive" }] as const;
      await assert.rejects(client.update<User>("users", first.id, { name: "x" }, { filters: onlyIfInactive }), {
        name: "ServerError",
        code: "not_found",
      });
      const updated = await client.update<User>("users", first.id, { name: `Ida B-${tag}` }, {
        filters: [{ column: "status", operator: "eq", value: "active" }],
      });
      assert.equal(updated.name, `Ida B-${tag}`);
    });

    test("ping answers with a round trip", async () => {
      const rtt = await client.ping();
      assert.ok(rtt >= 0 && rtt < 5000);
    });
  });
}

// Compile-time checks of the typed API: never run, only type-checked (the build fails if a
// line marked @ts-expect-error compiles).
export function typeChecks(client: Client): void {
  void client.read<User>("users", {
    filters: [
      { column: "status", operator: "in", value: ["active", "away"] },
      { column: "id", operator: "between", value: [1, 9] },
      { column: "email", operator: "is_null" },
      { column: "name", operator: "ilike", value: "a%" },
    ],
    sort: [{ column: "name" }],
    columns: ["id", "name"],
  });
  // @ts-expect-error: no such column
  void client.read<User>("users", { filters: [{ column: "nope", operator: "eq", value: 1 }] });
  // @ts-expect-error: a number column takes numbers
  void client.read<User>("users", { filters: [{ column: "id", operator: "eq", value: "1" }] });
  // @ts-expect-error: `in` takes a list
  void client.read<User>("users", { filters: [{ column: "id", operator: "in", value: 1 }] });
  // @ts-expect-error: text operators only on text columns
  void client.read<User>("users", { filters: [{ column: "id", operator: "like", value: "1%" }] });
  // @ts-expect-error: no such operator
  void client.read<User>("users", { filters: [{ column: "id", operator: "~", value: 1 }] });
  // @ts-expect-error: sort by a column of the entity
  void client.read<User>("users", { sort: [{ column: "nope" }] });
  // @ts-expect-error: a create gives the entity's columns
  void client.create<User>("users", { nickname: "x" });
  // Untyped entities take any column.
  void client.read("anything", { filters: [{ column: "whatever", operator: "like", value: "%" }] });
  void client.subscribe<User>("users", { filters: [{ column: "status", operator: "eq", value: "active" }] }, (change) => {
    if (change.operation === "create") {
      const user: User = change.row;
      void user;
    } else if (change.operation === "reset") {
      const rows: User[] | undefined = change.rows;
      void rows;
    }
  });
}
