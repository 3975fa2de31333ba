// The restart scenario against the real quickstart: the server stops and starts again on the
// same port; clients reconnect with backoff, subscribe again, tell subscribers that changes
// may have been missed, and send what waited. A connection dropped by a proxy while the server
// runs on resumes from its last position (the server replays what was missed). Also:
// fail-fast, the bounded queue, timeouts, giving up, a server that stops answering (SIGSTOP),
// and the backoff policy itself.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, test } from "node:test";
import {
  type Change,
  Client,
  type ClientOptions,
  type ClientState,
  ConnectionClosedError,
  QueueFullError,
  RequestTimeoutError,
  type ResetChange,
  type RowChange,
  type StateDetail,
  backoffDelay,
  backoffPolicy,
} from "websocketspec";
import { CuttableProxy, PythonServer, Recorder, freePort, python, transports, within } from "./support.js";

interface User {
  id: number;
  name: string;
  email: string;
  status: string;
}

// Node 20's global WebSocket may hang on a handshake whose server dies under it: the
// handshake timeout is what ends such an attempt.
const FAST: ClientOptions = { reconnect: { initialDelay: 50, maxDelay: 400 }, connectTimeout: 1000 };
const [wsPackage] = transports();
const WebSocket = wsPackage!.WebSocket;

/** Insert a row straight into the SQLite file, as another program would while we are down. */
function insertOffline(server: PythonServer, name: string): void {
  execFileSync(
    python(),
    [
      "-c",
      "import sqlite3, sys\n" +
        "db = sqlite3.connect(sys.argv[1])\n" +
        "db.execute(\"insert into users (name, email, status) values (?, ?, 'active')\", (sys.argv[2], sys.argv[2] + '@offline.example'))\n" +
        "db.commit()\n",
      server.databasePath,
      name,
    ],
    { timeout: 10_000 },
  );
}

function watchStates(client: Client): Recorder<[ClientState, StateDetail]> {
  const states = new Recorder<[ClientState, StateDetail]>();
  client.on("state", (state, detail) => states.push([state, detail]));
  return states;
}

describe("losing the connection", () => {
  let server: PythonServer;

  before(async () => {
    server = await PythonServer.start({ kind: "quickstart" });
  });

  after(async () => {
    await server.dispose();
  });

  for (const transport of transports()) {
    test(`over the ${transport.name}: reconnect, resubscribe, reset, and send what was queued`, async () => {
      const client = new Client(server.url, { WebSocket: transport.WebSocket, ...FAST });
      const writer = new Client(server.url, { WebSocket: transport.WebSocket, ...FAST });
      const states = watchStates(client);
      try {
        await within("connect", Promise.all([client.connect(), writer.connect()]));
        const tag = transport.name.replace(/\W+/g, "-");
        const plain = new Recorder<Change<User>>();
        const live = new Recorder<Change<User>>();
        const unsubscribePlain = await client.subscribe<User>("users", {}, plain.push);
        await client.subscribe<User>("users", { snapshot: true }, live.push);
        const firstId = unsubscribePlain.subscriptionId;
        await live.next("the first snapshot", (change) => change.operation === "reset");

        const ann = await writer.create<User>("users", { name: `Ann-${tag}`, email: "ann@example.com" });
        await plain.next("Ann", (change) => change.operation === "create" && change.row.id === ann.id);
        await live.next("Ann", (change) => change.operation === "create" && change.row.id === ann.id);

        const seen = states.items.length;
        await server.stop();
        const [, lost] = await states.next("reconnecting", ([state]) => state === "reconnecting", seen);
        assert.equal(lost.attempt, 1);
        assert.equal(lost.code, 1001, "the direct server says going away");
        assert.ok((lost.delay ?? -1) >= 25 && (lost.delay ?? 0) <= 50, `delay ${lost.delay}`);
        assert.equal(unsubscribePlain.subscriptionId, null);

        // Asked while down: waits in the queue for the next connection.
        const queued = client.read<User>("users", { sort: [{ column: "id" }] });
        const offline = `Otto-${tag}`;
        insertOffline(server, offline);
        const plainBefore = plain.items.length;
        const liveBefore = live.items.length;
        await server.start();

        await states.next("open again", ([state]) => state === "open", seen);
        // Subscribers are told that changes may have been missed...
        const reset = (await plain.next(
          "a reset after the reconnect",
          (change) => change.operation === "reset",
          plainBefore,
        )) as ResetChange<User>;
        assert.ok(reset.reason === "reconnected" || reset.reason === "server", reset.reason);
        assert.equal(reset.rows, undefined);
        // ...and with a snapshot they get the rows, including what changed meanwhile.
        const fresh = (await live.next(
          "the rows after the reconnect",
          (change) => change.operation === "reset",
          liveBefore,
        )) as ResetChange<User>;
        assert.deepEqual(
          fresh.rows?.map((row) => row.name).filter((name) => name.endsWith(tag)),
          [`Ann-${tag}`, offline],
        );
        const rows = await within("the queued read", queued);
        assert.deepEqual(
          rows.map((row) => row.name).filter((name) => name.endsWith(tag)),
          [`Ann-${tag}`, offline],
        );

        // Live again, under a new server-side id.
        assert.notEqual(unsubscribePlain.subscriptionId, null);
        assert.notEqual(unsubscribePlain.subscriptionId, firstId);
        await within("the writer to reconnect", writer.connect());
        const bob = await writer.create<User>("users", { name: `Bob-${tag}`, email: "bob@example.com" });
        await plain.next("Bob", (change) => change.operation === "create" && change.row.id === bob.id, plainBefore);
        await live.next("Bob", (change) => change.operation === "create" && change.row.id === bob.id, liveBefore);
        await unsubscribePlain();
      } finally {
        await Promise.all([client.close(), writer.close()]);
      }
    });
  }

  test("a dropped connection resumes: the server replays exactly the missed changes", async () => {
    const proxy = await CuttableProxy.start(server.port);
    const client = new Client(proxy.url, { WebSocket, ...FAST });
    const writer = new Client(server.url, { WebSocket, ...FAST });
    const states = watchStates(client);
    try {
      await within("connect", Promise.all([client.connect(), writer.connect()]));
      const filters = [{ column: "email", operator: "endswith", value: "@resume.example" }] as const;
      const plain = new Recorder<Change<User>>();
      const live = new Recorder<Change<User>>();
      await client.subscribe<User>("users", { filters }, plain.push);
      await client.subscribe<User>("users", { filters, snapshot: true }, live.push);
      const una = await writer.create<User>("users", { name: "Una", email: "una@resume.example" });
      await plain.next("Una", (change) => change.operation === "create");
      await live.next("Una", (change) => change.operation === "create");

      proxy.cut();
      await states.next("reconnecting", ([state]) => state === "reconnecting");
      // Missed while away: one create, one update, one delete.
      const vic = await writer.create<User>("users", { name: "Vic", email: "vic@resume.example" });
      const una2 = await writer.update<User>("users", una.id, { name: "Una Two" });
      await writer.delete<User>("users", vic.id);
      const before = plain.items.length;
      const liveBefore = live.items.length;
      proxy.restore();

      const expected = [
        ["create", vic],
        ["update", una2],
        ["delete", vic],
      ];
      for (const [recorder, from] of [[plain, before], [live, liveBefore]] as const) {
        await recorder.next("the replayed delete", (change) => change.operation === "delete", from);
        const replayed = recorder.items.slice(from) as RowChange<User>[];
        assert.deepEqual(
          replayed.map((change) => [change.operation, change.row]),
          expected,
          "replayed in commit order, and no reset",
        );
      }
      // Live again afterwards, once.
      const wes = await writer.create<User>("users", { name: "Wes", email: "wes@resume.example" });
      await plain.next("Wes", (change) => change.operation === "create" && change.row.id === wes.id, before);
      assert.equal(plain.items.filter((change) => change.operation === "reset").length, 0);
      assert.equal(live.items.filter((change) => change.operation === "reset").length, 1, "only the first snapshot");
    } finally {
      await Promise.all([client.close(), writer.close()]);
      await proxy.close();
    }
  });

  test("fail-fast, the bounded queue and request timeouts while disconnected", async () => {
    const failFast = new Client(server.url, { WebSocket, ...FAST, whileDisconnected: "fail" });
    const bounded = new Client(server.url, { WebSocket, ...FAST, maxQueue: 2 });
    const impatient = new Client(server.url, { WebSocket, ...FAST, requestTimeout: 200 });
    const clients = [failFast, bounded, impatient];
    try {
      await within("connect", Promise.all(clients.map((client) => client.connect())));
      const down = clients.map((client) => {
        const states = watchStates(client);
        return states.next("reconnecting", ([state]) => state === "reconnecting");
      });
      await server.stop();
      await within("every client to notice", Promise.all(down));

      await assert.rejects(failFast.read("users"), (error: unknown) => {
        assert.ok(error instanceof ConnectionClosedError);
        assert.match(error.message, /not connected/);
        return true;
      });
      const waiting = [bounded.read("users"), bounded.meta("users")];
      await assert.rejects(bounded.read("posts"), QueueFullError);
      await assert.rejects(impatient.read("users"), (error: unknown) => {
        assert.ok(error instanceof RequestTimeoutError);
        assert.equal(error.timeout, 200);
        return true;
      });

      await server.start();
      const [users, meta] = await within("the queued requests", Promise.all(waiting));
      assert.ok(Array.isArray(users));
      assert.equal((meta as { entity: string }).entity, "users");
      await within("the fail-fast client to reconnect", failFast.connect());
      assert.ok(Array.isArray(await failFast.read("users")));
    } finally {
      await Promise.all(clients.map((client) => client.close()));
    }
  });

  test("a server that stops answering is found by the keepalive, and the client reconnects", async () => {
    const client = new Client(server.url, { WebSocket, ...FAST, keepaliveInterval: 300 });
    const states = watchStates(client);
    try {
      await within("connect", client.connect());
      server.pause();
      try {
        const [, detail] = await states.next("the keepalive to give up", ([state]) => state === "reconnecting");
        assert.equal(detail.reason, "no pong to the keepalive ping");
      } finally {
        server.resume();
      }
      const opened = states.items.length;
      await states.next("open again", ([state]) => state === "open", opened);
      assert.ok(Array.isArray(await client.read("users")));
    } finally {
      await client.close();
    }
  });
});

describe("giving up and closing", () => {
  test("connect() rejects after maxAttempts failed attempts; reconnect: false tries once", async () => {
    const url = `ws://127.0.0.1:${await freePort()}/ws`;
    const limited = new Client(url, { WebSocket, reconnect: { initialDelay: 10, maxAttempts: 2 } });
    const states = watchStates(limited);
    await assert.rejects(within("giving up", limited.connect()), (error: unknown) => {
      assert.ok(error instanceof ConnectionClosedError);
      assert.match(error.message, /gave up after 2 failed attempts/);
      return true;
    });
    assert.deepEqual(
      states.items.map(([state]) => state),
      ["connecting", "reconnecting", "connecting", "closed"],
    );
    await assert.rejects(limited.read("users"), ConnectionClosedError);

    const once = new Client(url, { WebSocket, reconnect: false });
    await assert.rejects(within("failing", once.connect()), /reconnect is off/);
    assert.equal(once.state, "closed");
  });

  test("close() rejects what waits and stops reconnecting", async () => {
    const url = `ws://127.0.0.1:${await freePort()}/ws`;
    const client = new Client(url, { WebSocket, reconnect: { initialDelay: 10_000 } });
    const states = watchStates(client);
    const connecting = client.connect();
    const queued = client.read("users");
    await states.next("the first failure", ([state]) => state === "reconnecting");
    await client.close();
    await assert.rejects(connecting, /the client is closed/);
    await assert.rejects(queued, ConnectionClosedError);
    assert.equal(client.state, "closed");
    assert.equal(states.items.at(-1)?.[0], "closed");
    await assert.rejects(client.connect(), ConnectionClosedError);
  });

  test("a client without any WebSocket class says how to get one", () => {
    const global = globalThis as { WebSocket?: unknown };
    const saved = global.WebSocket;
    delete global.WebSocket;
    try {
      assert.throws(() => new Client("ws://127.0.0.1:1/ws"), /pass one as the WebSocket option/);
    } finally {
      global.WebSocket = saved;
    }
  });
});

describe("backoff", () => {
  test("delays grow exponentially up to the maximum, with the configured jitter", () => {
    const exact = backoffPolicy({ initialDelay: 100, maxDelay: 1000, factor: 2, jitter: 0 });
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6].map((attempt) => backoffDelay(exact, attempt)),
      [100, 200, 400, 800, 1000, 1000],
    );
    const jittered = backoffPolicy({ initialDelay: 100, maxDelay: 1000, jitter: 0.5 });
    assert.equal(backoffDelay(jittered, 3, 0), 400);
    assert.equal(backoffDelay(jittered, 3, 0.999_999), 400 * (1 - 0.5 * 0.999_999));
    for (let attempt = 1; attempt <= 20; attempt++) {
      const delay = backoffDelay(jittered, attempt);
      const base = Math.min(1000, 100 * 2 ** (attempt - 1));
      assert.ok(delay > base / 2 && delay <= base, `attempt ${attempt}: ${delay}`);
    }
    assert.deepEqual(backoffPolicy(), {
      initialDelay: 500,
      maxDelay: 30_000,
      factor: 2,
      jitter: 0.5,
      maxAttempts: Number.POSITIVE_INFINITY,
    });
    assert.throws(() => backoffPolicy({ jitter: 2 }), RangeError);
    assert.throws(() => backoffPolicy({ initialDelay: 10, maxDelay: 5 }), RangeError);
    assert.throws(() => backoffPolicy({ maxAttempts: 0 }), RangeError);
  });
});
