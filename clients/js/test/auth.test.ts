// Bearer tokens against the real server with BearerAuth (tests/e2e/server.py --auth, under
// uvicorn): the token in the handshake's subprotocols, a fresh one in-band when the server
// says token_expired, revoked subscriptions, and a fresh token for every reconnect.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type Change, Client, type ClientOptions, ConnectionClosedError, ServerError } from "websocketspec";
import { PythonServer, Recorder, token, transports, within } from "./support.js";

interface User {
  id: number;
  name: string;
  email: string;
  status: string;
}

const FAST: ClientOptions = { reconnect: { initialDelay: 50, maxDelay: 400 }, connectTimeout: 2000 };

let server: PythonServer;

before(async () => {
  server = await PythonServer.start({ kind: "app", auth: true, gracePeriod: 10 });
});

after(async () => {
  await server.dispose();
});

for (const transport of transports()) {
  describe(`bearer tokens over the ${transport.name}`, () => {
    const options = { WebSocket: transport.WebSocket, ...FAST };

    test("the token goes in the handshake; without a valid one the upgrade is refused", async () => {
      const client = new Client(server.url, { ...options, token: token("ann", 60_000) });
      try {
        await within("connect", client.connect());
        assert.deepEqual(await client.read("users", { limit: 1, filters: [{ column: "id", operator: "lt", value: 0 }] }), []);
      } finally {
        await client.close();
      }
      for (const refused of [undefined, "not a token"]) {
        const anonymous = new Client(server.url, {
          ...options,
          ...(refused !== undefined ? { token: refused } : {}),
          reconnect: { maxAttempts: 1 },
        });
        await assert.rejects(within("a refusal", anonymous.connect()), ConnectionClosedError);
        assert.equal(anonymous.state, "closed");
      }
    });

    test("token_expired: a fresh token is sent in-band and the subscription carries on", async () => {
      const issued: string[] = [];
      const client = new Client(server.url, {
        ...options,
        // The first token lives three seconds (time enough for the handshake); the next ones a minute.
        token: async () => {
          issued.push(token("ann", issued.length === 0 ? 3000 : 60_000));
          return issued.at(-1)!;
        },
      });
      const writer = new Client(server.url, { ...options, token: token("writer", 60_000) });
      const states = new Recorder<string>();
      client.on("state", (state) => states.push(state));
      const pushed = new Recorder<string>();
      client.on("notification", (message) => pushed.push(message.operation));
      const refreshed = new Recorder<Record<string, unknown>>();
      client.on("authenticated", refreshed.push);
      try {
        await within("connect", Promise.all([client.connect(), writer.connect()]));
        const changes = new Recorder<Change<User>>();
        await client.subscribe<User>("users", { filters: [{ column: "name", operator: "eq", value: "Tok" }] }, changes.push);

        await pushed.next("token_expired", (operation) => operation === "token_expired");
        const result = await refreshed.next("the in-band refresh", () => true);
        assert.equal(result["authenticated"], true);
        assert.equal(issued.length, 2);

        const tok = await writer.create<User>("users", { name: "Tok", email: "tok@example.com" });
        const change = await changes.next("Tok", (item) => item.operation === "create");
        assert.deepEqual(change.operation === "create" && change.row, tok);
        assert.ok(Array.isArray(await client.read("users")));
        assert.deepEqual(states.items, ["connecting", "open"], "never reconnected");
      } finally {
        await Promise.all([client.close(), writer.close()]);
      }
    });

    test("authenticate() switches identity in-band; a subscription the new one may not see is revoked", async () => {
      const client = new Client(server.url, { ...options, token: token("ann", 60_000) });
      try {
        await within("connect", client.connect());
        const changes = new Recorder<Change<User>>();
        await client.subscribe<User>("users", {}, changes.push);
        const result = await client.authenticate(token("blocked", 60_000));
        assert.equal(result["authenticated"], true);
        const revoked = await changes.next("revoked", (change) => change.operation === "revoked");
        assert.deepEqual(revoked, {
          operation: "revoked",
          reason: "unauthorized",
          message: "user 'blocked' may not subscribe",
        });
        await assert.rejects(client.subscribe("users", {}, () => {}), { name: "ServerError", code: "unauthorized" });
        await assert.rejects(client.authenticate("not a token"), (error: unknown) => {
          assert.ok(error instanceof ServerError);
          assert.equal(error.code, "unauthorized");
          return true;
        });
      } finally {
        await client.close();
      }
    });
  });
}

test("every reconnect asks the token function again, and subscriptions come back", async () => {
  const issued: string[] = [];
  const [ws] = transports();
  const client = new Client(server.url, {
    WebSocket: ws!.WebSocket,
    ...FAST,
    token: () => {
      issued.push(token(`user${issued.length}`, 60_000));
      return issued.at(-1)!;
    },
  });
  try {
    await within("connect", client.connect());
    const changes = new Recorder<Change<User>>();
    await client.subscribe<User>("users", { filters: [{ column: "name", operator: "eq", value: "Rex" }] }, changes.push);
    await server.restart();
    await changes.next("the reset after the restart", (change) => change.operation === "reset");
    assert.ok(issued.length >= 2, `tokens issued: ${issued.join(", ")}`);
    const writer = new Client(server.url, { WebSocket: ws!.WebSocket, token: token("writer", 60_000) });
    try {
      await within("the writer", writer.connect());
      await writer.create<User>("users", { name: "Rex", email: "rex@example.com" });
    } finally {
      await writer.close();
    }
    await changes.next("Rex", (change) => change.operation === "create");
  } finally {
    await client.close();
  }
});
