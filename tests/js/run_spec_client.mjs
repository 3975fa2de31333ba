// Drives the spec's TypeScript WebSocketClient (websocket_client.ts, copied verbatim from the
// README) against a running server, the way the README's "Usage" part does: read users with a
// filter, subscribe to users with a filter, create a user, and receive the notification.
//
//   node [--experimental-websocket] run_spec_client.mjs ws://127.0.0.1:8080/ws
//
// Prints one JSON line per result, in this order:
//   {"step":"read","result":[...]}
//   {"step":"subscribe","subscription_id":"..."}
//   {"step":"create","result":{...}}
//   {"step":"notification","notification":{...}}
// and exits 0. Exits non-zero if anything fails or does not arrive within TIMEOUT_MS.
// The class is transpiled with ts.transpileModule and used as it is: the driver only waits for
// the socket's open event (the class has no connect promise) and closes the socket at the end.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import ts from "typescript";

const TIMEOUT_MS = 10_000;
const here = dirname(fileURLToPath(import.meta.url));

function fail(message) {
  process.stderr.write(`run_spec_client: ${message}\n`);
  process.exit(1);
}

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

/** Resolves with `promise`, or rejects when it has not settled after TIMEOUT_MS. */
function within(what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${TIMEOUT_MS} ms waiting for ${what}`)),
      TIMEOUT_MS,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function loadClientClass() {
  const source = readFileSync(join(here, "websocket_client.ts"), "utf8");
  const output = ts.transpileModule(source, {
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
    },
    reportDiagnostics: true,
    fileName: "websocket_client.ts",
  });
  if (output.diagnostics && output.diagnostics.length > 0) {
    const text = ts.formatDiagnostics(output.diagnostics, {
      getCanonicalFileName: (name) => name,
      getCurrentDirectory: () => here,
      getNewLine: () => "\n",
    });
    fail(`websocket_client.ts does not transpile:\n${text}`);
  }
  const dir = mkdtempSync(join(tmpdir(), "spec-client-"));
  try {
    const file = join(dir, "websocket_client.mjs");
    writeFileSync(file, `${output.outputText}\nexport { WebSocketClient };\n`);
    const module = await import(pathToFileURL(file).href);
    return module.WebSocketClient;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  const url = process.argv[2];
  if (!url) {
    fail("usage: run_spec_client.mjs WS_URL");
  }
  if (typeof globalThis.WebSocket !== "function") {
    fail(
      `no global WebSocket in Node ${process.versions.node}: ` +
        "run with --experimental-websocket on Node 20-21",
    );
  }
  const WebSocketClient = await loadClientClass();
  const client = new WebSocketClient(url);

  // The class keeps its socket in the (TypeScript-private) field `ws` and sends at once, so
  // wait for the socket to open first. A close or error before the end is a failure.
  const ws = client["ws"];
  let finished = false;
  ws.addEventListener("close", (event) => {
    if (!finished) {
      fail(`socket closed early: code ${event.code} ${event.reason}`);
    }
  });
  ws.addEventListener("error", (event) => {
    if (!finished) {
      fail(`socket error: ${event.message ?? event.error ?? "unknown"}`);
    }
  });
  if (ws.readyState !== WebSocket.OPEN) {
    await within(
      "the socket to open",
      new Promise((resolve) => ws.addEventListener("open", resolve, { once: true })),
    );
  }

  const filters = [{ column: "status", operator: "eq", value: "active" }];

  // Read users (the README's usage: options are spread into the message).
  const users = await within(
    "the read response",
    client.request("read", "users", { options: { filters, limit: 10 } }),
  );
  emit({ step: "read", result: users });

  // Subscribe to user changes.
  let notified;
  const notification = new Promise((resolve) => {
    notified = resolve;
  });
  const subscriptionId = await within(
    "the subscribe response",
    client.subscribe("users", filters, (message) => notified(message)),
  );
  emit({ step: "subscribe", subscription_id: subscriptionId });

  // Create user.
  const newUser = await within(
    "the create response",
    client.request("create", "users", {
      data: { name: "Alice", email: "alice@example.com", status: "active" },
    }),
  );
  emit({ step: "create", result: newUser });

  emit({ step: "notification", notification: await within("the notification", notification) });

  finished = true;
  ws.close(1000, "done");
  await within(
    "the socket to close",
    new Promise((resolve) => {
      if (ws.readyState === WebSocket.CLOSED) {
        resolve();
      } else {
        ws.addEventListener("close", resolve, { once: true });
      }
    }),
  );
}

main().then(
  () => process.exit(0),
  (error) => fail(error instanceof Error ? error.message : JSON.stringify(error)),
);
