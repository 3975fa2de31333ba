// The TypeScript client from Node: read, subscribe, write, handle a typed error.
//
//   cd clients/js && npm ci && npm run build          # once
//   python examples/quickstart.py &                   # the server, ws://127.0.0.1:8080/ws
//   node examples/client_js/node_example.mjs [ws://127.0.0.1:8080/ws]
//
// Node >= 22 has a global WebSocket; on Node 20 run node with --experimental-websocket, or
// install the `ws` package and pass its class: new Client(url, { WebSocket }).
// In your own project: npm install websocketspec, then import from "websocketspec".
import { Client, ServerError } from "../../clients/js/dist/index.js";

const url = process.argv[2] ?? "ws://127.0.0.1:8080/ws";
const client = new Client(url, { reconnect: { maxAttempts: 3 } });
client.on("state", (state) => console.log(`state: ${state}`));
await client.connect();

// Live changes to active users. The callback is told what each change means for the filter.
const operations = [];
let allThree;
const threeChanges = new Promise((resolve) => (allThree = resolve));
const unsubscribe = await client.subscribe(
  "users",
  { filters: [{ column: "status", operator: "eq", value: "active" }] },
  (change) => {
    console.log(`change: ${change.operation} ${JSON.stringify(change.row ?? null)}`);
    operations.push(change.operation);
    if (operations.length === 3) allThree();
  },
);

const ann = await client.create("users", { name: "Ann", email: "ann@example.com", status: "active" });
console.log(`created: ${JSON.stringify(ann)}`);
await client.update("users", ann.id, { name: "Ann Lee" }); // stays in the filter: update
await client.update("users", ann.id, { status: "inactive" }); // leaves it: delete (old row)
await threeChanges;
console.log(`notified: ${operations.join(", ")}`);
await unsubscribe();

const page = await client.readPage("users", {
  filters: [{ column: "name", operator: "startswith", value: "Ann" }],
  sort: [{ column: "id", direction: "desc" }],
  limit: 5,
});
console.log(`read: ${page.count} of ${page.total} users named Ann*`);

try {
  await client.create("users", { name: "No Email" });
} catch (error) {
  if (!(error instanceof ServerError)) throw error;
  console.log(`refused: ${error.code} (field ${error.field}): ${error.message}`);
}
await client.close();
