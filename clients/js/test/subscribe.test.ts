// Subscriptions against the real quickstart: what each change means for a filter, snapshots,
// columns, unsubscribing, and callbacks that throw.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type Change, Client, type RowChange } from "websocketspec";
import { PythonServer, Recorder, transports, within } from "./support.js";

interface User {
  id: number;
  name: string;
  email: string;
  status: string;
}

let server: PythonServer;

before(async () => {
  server = await PythonServer.start({ kind: "quickstart" });
});

after(async () => {
  await server.dispose();
});

for (const transport of transports()) {
  describe(`subscriptions over the ${transport.name}`, () => {
    let client: Client;
    let writer: Client;
    const tag = transport.name.replace(/\W+/g, "-");
    const mine = { column: "email", operator: "endswith", value: `@${tag}.example` } as const;

    before(async () => {
      client = new Client(server.url, { WebSocket: transport.WebSocket });
      writer = new Client(server.url, { WebSocket: transport.WebSocket });
      await within("connect", Promise.all([client.connect(), writer.connect()]));
    });

    after(async () => {
      await Promise.all([client.close(), writer.close()]);
    });

    test("a filtered subscription is told what each change means for its filter", async () => {
      const changes = new Recorder<Change<User>>();
      const unsubscribe = await client.subscribe<User>(
        "users",
        { filters: [{ column: "status", operator: "eq", value: "active" }, mine] },
        changes.push,
      );
      assert.match(unsubscribe.subscriptionId ?? "", /.+/);

      const ann = await writer.create<User>("users", { name: "Ann", email: `ann@${tag}.example` });
      await writer.create<User>("users", { name: "Ian", email: `ian@${tag}.example`, status: "inactive" });
      const renamed = await writer.update<User>("users", ann.id, { name: "Anna" });
      const away = await writer.update<User>("users", ann.id, { status: "away" });
      const back = await writer.update<User>("users", ann.id, { status: "active" });
      const gone = await writer.delete<User>("users", ann.id);
      await changes.next("the delete", (change) => change.operation === "delete" && change.change === undefined);

      const rows = changes.items as RowChange<User>[];
      assert.deepEqual(
        rows.map((change) => [change.operation, change.change, change.sourceOperation, change.row]),
        [
          ["create", undefined, "create", ann],
          ["update", "stay", "update", renamed],
          ["delete", "leave", "update", renamed], // the old row, never the new values
          ["create", "enter", "update", back],
          ["delete", undefined, "delete", gone],
        ],
      );
      assert.notDeepEqual(away, renamed);
      for (const change of rows) {
        assert.equal(change.entity, "users");
        assert.equal(change.schema, "public");
        assert.match(change.timestamp, /Z$/);
      }
      const seqs = rows.map((change) => change.position?.seq ?? 0);
      assert.ok(
        seqs.every((seq, index) => index === 0 || seq > seqs[index - 1]!),
        `positions increase: ${seqs.join(", ")}`,
      );

      await unsubscribe();
      assert.equal(unsubscribe.subscriptionId, null);
    });

    test("snapshot: the first change is a reset with the matching rows, then changes follow", async () => {
      const before = await Promise.all(
        ["Bea", "Cy"].map((name) => writer.create<User>("users", { name, email: `${name}@snap.${tag}.example` })),
      );
      const changes = new Recorder<Change<User>>();
      const unsubscribe = await client.subscribe<User>(
        "users",
        { filters: [{ column: "email", operator: "endswith", value: `@snap.${tag}.example` }], snapshot: true },
        changes.push,
      );
      const first = await changes.next("the snapshot", () => true);
      assert.equal(first.operation, "reset");
      assert.equal(first.operation === "reset" && first.reason, "subscribed");
      assert.deepEqual(first.operation === "reset" && first.rows, before);

      const dee = await writer.create<User>("users", { name: "Dee", email: `dee@snap.${tag}.example` });
      const created = await changes.next("Dee", (change) => change.operation === "create");
      assert.deepEqual(created.operation === "create" && created.row, dee);
      assert.equal(changes.items.length, 2);
      await unsubscribe();
    });

    test("columns limit each notification's row; the primary key is always there", async () => {
      const changes = new Recorder<Change<User>>();
      const unsubscribe = await client.subscribe<User>(
        "users",
        { filters: [{ column: "email", operator: "endswith", value: `@cols.${tag}.example` }], columns: ["name"] },
        changes.push,
      );
      const eli = await writer.create<User>("users", { name: "Eli", email: `eli@cols.${tag}.example` });
      const change = await changes.next("Eli", (item) => item.operation === "create");
      assert.deepEqual(change.operation === "create" && change.row, { id: eli.id, name: "Eli" });
      await unsubscribe();
    });

    test("after unsubscribe nothing more arrives; a throwing callback is reported, not fatal", async () => {
      const errors = new Recorder<Error>();
      const off = client.on("error", errors.push);
      const quiet = new Recorder<Change<User>>();
      const loud = new Recorder<Change<User>>();
      const filter = { column: "email", operator: "endswith", value: `@unsub.${tag}.example` } as const;
      const stop = await client.subscribe<User>("users", { filters: [filter] }, quiet.push);
      await client.subscribe<User>("users", { filters: [filter] }, (change) => {
        loud.push(change);
        throw new Error(`callback failed on ${change.operation}`);
      });
      await writer.create<User>("users", { name: "Flo", email: `flo@unsub.${tag}.example` });
      await quiet.next("Flo, to the first", (change) => change.operation === "create");
      await errors.next("the callback's error", (error) => error.message === "callback failed on create");

      await stop();
      await writer.create<User>("users", { name: "Gus", email: `gus@unsub.${tag}.example` });
      // The second subscription hears of Gus, so the first would have by now.
      await loud.next("Gus, to the second", (change) => change.operation === "create" && change.row.name === "Gus");
      assert.equal(quiet.items.length, 1);
      assert.equal(errors.items.length, 2);
      off();
    });

    test("a refused subscription rejects with the server's code", async () => {
      await assert.rejects(
        client.subscribe("users", { filters: [{ column: "nope", operator: "eq", value: 1 }] }, () => {}),
        { name: "ServerError", code: "invalid_column" },
      );
      await assert.rejects(client.subscribe("nobody", {}, () => {}), { name: "ServerError", code: "model_not_found" });
    });
  });
}
