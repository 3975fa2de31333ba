// A live list of users: the websocketspec TypeScript client, built (clients/js/dist) and
// served by live_users.py at /websocketspec/, subscribes with a snapshot and applies each
// change. After the server restarts it reconnects, subscribes again and gets the rows anew.
import { Client } from "/websocketspec/index.js";

const statusEl = document.getElementById("status");
const usersEl = document.getElementById("users");
const emptyEl = document.getElementById("empty");
const resyncsEl = document.getElementById("resyncs");
const logEl = document.getElementById("log");

const users = new Map(); // id -> row
let resyncs = 0;

function log(line) {
  logEl.textContent = `${new Date().toISOString().slice(11, 23)} ${line}\n${logEl.textContent}`.slice(0, 4000);
}

function render() {
  const rows = [...users.values()].sort((a, b) => a.id - b.id);
  usersEl.replaceChildren(
    ...rows.map((user) => {
      const tr = document.createElement("tr");
      tr.dataset.id = String(user.id);
      for (const key of ["id", "name", "email", "status"]) {
        const td = document.createElement("td");
        td.className = key;
        td.textContent = String(user[key] ?? "");
        tr.append(td);
      }
      return tr;
    }),
  );
  emptyEl.hidden = rows.length > 0;
}

// "/ws" is this page's own host: the same origin serves the page and the socket.
const client = new Client("/ws", { reconnect: { initialDelay: 200, maxDelay: 2000 } });

client.on("state", (state, detail) => {
  statusEl.textContent = state;
  statusEl.dataset.state = state;
  log(`state ${state}${detail.attempt ? ` (attempt ${detail.attempt})` : ""}`);
});
client.on("error", (error) => log(`error ${error.message}`));

await client.subscribe("users", { snapshot: true }, (change) => {
  switch (change.operation) {
    case "reset":
      // First the current rows, and again after every reconnect: replace the list.
      users.clear();
      for (const row of change.rows ?? []) users.set(row.id, row);
      if (change.reason !== "subscribed") resyncsEl.textContent = String(++resyncs);
      log(`reset (${change.reason}): ${users.size} users`);
      break;
    case "create":
    case "update":
      users.set(change.row.id, change.row);
      log(`${change.operation} ${change.row.id}`);
      break;
    case "delete":
      users.delete(change.row.id);
      log(`delete ${change.row.id}`);
      break;
    case "revoked":
      log(`revoked: ${change.message}`);
      break;
  }
  render();
});
document.body.dataset.ready = "true";
