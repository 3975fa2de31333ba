// `npm test`: node's test runner over the compiled tests, with a global WebSocket on every
// supported Node (Node 20 and 21 need --experimental-websocket; 22 has it built in), so that
// the client is exercised over both the `ws` package and the global WebSocket.

import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const files = readdirSync(here)
  .filter((name) => name.endsWith(".test.js"))
  .filter((name) => process.argv.length <= 2 || process.argv.slice(2).some((arg) => name.includes(arg)))
  .sort()
  .map((name) => join(here, name));
const major = Number(process.versions.node.split(".")[0]);
const flags = major < 22 ? ["--experimental-websocket"] : [];
const run = spawnSync(process.execPath, [...flags, "--test", "--test-reporter=spec", ...files], {
  stdio: "inherit",
  env: { ...process.env, NODE_NO_WARNINGS: "1" },
});
process.exit(run.status ?? 1);
