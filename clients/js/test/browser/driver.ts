// Drives Debian's Chromium (headless, through playwright-core; no browser is downloaded) for
// tests/integration/test_js_client.py, which makes the changes and restarts the server.
//
//   node build/test/browser/driver.js
//
// Reads one JSON command per line on stdin and answers each with one JSON line on stdout:
//   {"cmd": "open", "url": "http://127.0.0.1:PORT/", "timeout": ms}
//   {"cmd": "wait", "state": "open", "stateIn": ["connecting", "reconnecting"],
//    "rows": [["1", "Ann", "ann@x", "active"]], "minResyncs": 1, "timeout": ms}
//                                           (waits until all that is given holds)
//   {"cmd": "screenshot", "path": "/abs/file.png"}
//   {"cmd": "close"}
// Answers: {"ok": true, "page": {...}} or {"ok": false, "error": "...", "page": {...}}, where
// page is what the page shows: {state, resyncs, rows, log} plus the console and page errors.

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { type BrowserContext, type Page, chromium } from "playwright-core";

const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";
const FLAGS = [
  "--no-sandbox", // as root
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

interface Command {
  cmd: "open" | "wait" | "screenshot" | "close";
  url?: string;
  state?: string;
  stateIn?: string[];
  rows?: string[][];
  minResyncs?: number;
  path?: string;
  timeout?: number;
}

interface Shown {
  state: string | null;
  resyncs: number;
  rows: string[][];
  log: string;
}

let context: BrowserContext | null = null;
let page: Page | null = null;
let profile: string | null = null;
const consoleLines: string[] = [];

function answer(value: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function shown(): Promise<Shown | null> {
  if (page === null) return null;
  return page.evaluate(() => {
    const doc = document;
    const status = doc.getElementById("status");
    return {
      state: status?.getAttribute("data-state") ?? null,
      resyncs: Number(doc.getElementById("resyncs")?.textContent ?? "0"),
      rows: [...doc.querySelectorAll("#users tr")].map((tr) =>
        [...tr.querySelectorAll("td")].map((td) => td.textContent ?? ""),
      ),
      log: (doc.getElementById("log")?.textContent ?? "").slice(0, 1500),
    };
  });
}

async function open(command: Command): Promise<void> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (scripts/lib/node.sh does it)`);
  }
  profile = mkdtempSync(join(tmpdir(), "websocketspec-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 900, height: 640 },
    timeout: command.timeout ?? 30_000,
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => consoleLines.push(`pageerror: ${error.message}`));
  await page.goto(command.url ?? "", { timeout: command.timeout ?? 30_000 });
  await page.waitForSelector("body[data-ready=true]", { timeout: command.timeout ?? 30_000 });
}

async function wait(command: Command): Promise<void> {
  if (page === null) throw new Error("open a page first");
  const expected = {
    states: command.state !== undefined ? [command.state] : (command.stateIn ?? null),
    rows: command.rows ?? null,
    minResyncs: command.minResyncs ?? 0,
  };
  await page.waitForFunction(
    (want) => {
      const doc = document;
      const state = doc.getElementById("status")?.getAttribute("data-state") ?? "";
      if (want.states !== null && !want.states.includes(state)) return false;
      if (Number(doc.getElementById("resyncs")?.textContent ?? "0") < want.minResyncs) return false;
      if (want.rows === null) return true;
      const rows = [...doc.querySelectorAll("#users tr")].map((tr) =>
        [...tr.querySelectorAll("td")].map((td) => td.textContent ?? ""),
      );
      return JSON.stringify(rows) === JSON.stringify(want.rows);
    },
    expected,
    { timeout: command.timeout ?? 10_000, polling: 50 },
  );
}

async function close(): Promise<void> {
  await context?.close();
  context = null;
  page = null;
  if (profile !== null) rmSync(profile, { recursive: true, force: true });
  profile = null;
}

async function run(command: Command): Promise<void> {
  switch (command.cmd) {
    case "open":
      return open(command);
    case "wait":
      return wait(command);
    case "screenshot":
      if (page === null) throw new Error("open a page first");
      await page.screenshot({ path: command.path ?? "screenshot.png", fullPage: true });
      return;
    case "close":
      return close();
    default:
      throw new Error(`unknown command ${JSON.stringify(command)}`);
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line.trim() === "") continue;
  let command: Command;
  try {
    command = JSON.parse(line) as Command;
    await run(command);
    answer({ ok: true, page: await shown().catch(() => null), console: consoleLines });
  } catch (error) {
    answer({
      ok: false,
      error: error instanceof Error ? error.message : String(error),
      page: await shown().catch(() => null),
      console: consoleLines,
    });
    continue;
  }
  if (command.cmd === "close") break;
}
await close();
lines.close();
process.stdin.destroy();
