// Real servers for the tests: the repository's Python servers, started as processes on free
// loopback ports, stopped and restarted on the same port. Every wait is bounded.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { type Server, type Socket, createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { openSync, closeSync } from "node:fs";
import { WebSocket as WsWebSocket } from "ws";
import type { WebSocketConstructor } from "websocketspec";

/** The repository's root (the tests run from clients/js/build/test/). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

export const TIMEOUT = 10_000;
const STARTUP_TIMEOUT = 30_000;

/** The Python that runs the servers: $WEBSOCKETSPEC_PYTHON, else the project's .venv. */
export function python(): string {
  const configured = process.env["WEBSOCKETSPEC_PYTHON"];
  const candidate = configured ?? join(ROOT, ".venv", "bin", "python");
  if (!existsSync(candidate)) {
    throw new Error(
      `no Python at ${candidate}: run ./scripts/test.sh (it creates .venv), ` +
        "or set WEBSOCKETSPEC_PYTHON to a Python with websocketspec[all] installed",
    );
  }
  return candidate;
}

/** Both ways to get a WebSocket on Node: the `ws` package and the global one. */
export function transports(): { name: string; WebSocket: WebSocketConstructor }[] {
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (global === undefined) {
    throw new Error(
      "no global WebSocket: run the tests with `npm test` (Node 20 needs --experimental-websocket)",
    );
  }
  return [
    { name: "ws package", WebSocket: WsWebSocket as unknown as WebSocketConstructor },
    { name: "global WebSocket", WebSocket: global },
  ];
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

/** Rejects when `promise` has not settled within `ms`. */
export async function within<T>(what: string, promise: Promise<T>, ms = TIMEOUT): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Collects values and lets a test wait, with a timeout, for one matching a predicate. */
export class Recorder<T> {
  readonly items: T[] = [];
  #waiters: { test: (item: T) => boolean; resolve: (item: T) => void }[] = [];

  push = (item: T): void => {
    this.items.push(item);
    for (const waiter of [...this.#waiters]) {
      if (waiter.test(item)) {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        waiter.resolve(item);
      }
    }
  };

  /** The first item from index `from` on that matches. */
  next(what: string, test: (item: T) => boolean, from = 0, ms = TIMEOUT): Promise<T> {
    const found = this.items.slice(from).find(test);
    if (found !== undefined) return Promise.resolve(found);
    return within(
      `${what} (seen: ${JSON.stringify(this.items.slice(from)).slice(0, 800)})`,
      new Promise<T>((resolveItem) => this.#waiters.push({ test, resolve: resolveItem })),
      ms,
    );
  }
}

export interface ServerOptions {
  /** `quickstart`: examples/quickstart.py (the direct server); `app`: tests/e2e/server.py (uvicorn). */
  kind: "quickstart" | "app";
  auth?: boolean;
  gracePeriod?: number;
}

/** One of the repository's servers as a process, on a port it keeps across restarts. */
export class PythonServer {
  readonly port: number;
  readonly options: ServerOptions;
  readonly #dir: string;
  readonly #database: string;
  #process: ChildProcess | null = null;
  #logs: string[] = [];

  private constructor(port: number, options: ServerOptions) {
    this.port = port;
    this.options = options;
    this.#dir = mkdtempSync(join(tmpdir(), "websocketspec-js-"));
    this.#database = `sqlite:///${join(this.#dir, "app.db")}`;
  }

  static async start(options: ServerOptions): Promise<PythonServer> {
    const server = new PythonServer(await freePort(), options);
    await server.start();
    return server;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get databasePath(): string {
    return join(this.#dir, "app.db");
  }

  /** What the server printed, every run so far. */
  get output(): string {
    return this.#logs.map((log) => (existsSync(log) ? readFileSync(log, "utf8") : "")).join("\n---\n");
  }

  async start(): Promise<void> {
    if (this.#process !== null) throw new Error("the server is already running");
    const log = join(this.#dir, `server-${this.#logs.length}.log`);
    this.#logs.push(log);
    const args =
      this.options.kind === "quickstart"
        ? [join(ROOT, "examples", "quickstart.py")]
        : ["-m", "tests.e2e.server"];
    args.push("--port", String(this.port), "--database", this.#database);
    if (this.options.auth === true) args.push("--auth");
    if (this.options.gracePeriod !== undefined) {
      args.push("--grace-period", String(this.options.gracePeriod));
    }
    const fd = openSync(log, "w");
    const child = spawn(python(), args, { cwd: ROOT, stdio: ["ignore", fd, fd] });
    closeSync(fd);
    this.#process = child;
    const deadline = Date.now() + STARTUP_TIMEOUT;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        this.#process = null;
        throw new Error(`the server exited (${child.exitCode ?? child.signalCode}):\n${this.output}`);
      }
      if (await accepts(this.port)) return;
      if (Date.now() > deadline) {
        await this.stop();
        throw new Error(`the server did not accept connections within ${STARTUP_TIMEOUT} ms:\n${this.output}`);
      }
      await new Promise((tick) => setTimeout(tick, 50));
    }
  }

  /** SIGTERM (the server closes its connections with 1001 or 1012), SIGKILL if it hangs. */
  async stop(): Promise<void> {
    const child = this.#process;
    this.#process = null;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolveExit) => child.once("exit", () => resolveExit()));
    child.kill("SIGTERM");
    try {
      await within("the server to exit", exited, TIMEOUT);
    } catch {
      child.kill("SIGKILL");
      await within("the killed server to exit", exited, TIMEOUT);
    }
  }

  /** SIGSTOP: the process keeps its sockets open but answers nothing. */
  pause(): void {
    this.#process?.kill("SIGSTOP");
  }

  resume(): void {
    this.#process?.kill("SIGCONT");
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Stop and remove the database; fails if the server logged an exception. */
  async dispose(): Promise<void> {
    await this.stop();
    const output = this.output;
    rmSync(this.#dir, { recursive: true, force: true });
    if (output.includes("Traceback")) throw new Error(`the server logged an exception:\n${output}`);
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolveAttempt) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolveAttempt(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** A token the test server accepts: `<user>.<expiry in Unix ms>`. */
export function token(user: string, ttlMs: number): string {
  return `${user}.${Date.now() + ttlMs}`;
}

/**
 * A TCP proxy on a free loopback port in front of a server, whose connections can be cut
 * (and new ones refused) while the server itself keeps running.
 */
export class CuttableProxy {
  readonly port: number;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #refusing = false;

  private constructor(server: Server, port: number) {
    this.#server = server;
    this.port = port;
  }

  static async start(targetPort: number): Promise<CuttableProxy> {
    let proxy: CuttableProxy | null = null;
    const server = createServer((client) => {
      if (proxy === null || proxy.#refusing) {
        client.destroy();
        return;
      }
      const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
      for (const socket of [client, upstream]) {
        proxy.#sockets.add(socket);
        const sockets = proxy.#sockets;
        socket.on("close", () => sockets.delete(socket));
        socket.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    const port = await new Promise<number>((resolveListen, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        resolveListen(typeof address === "object" && address !== null ? address.port : 0);
      });
    });
    proxy = new CuttableProxy(server, port);
    return proxy;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Drop every connection at once (no close frame) and refuse new ones. */
  cut(): void {
    this.#refusing = true;
    for (const socket of this.#sockets) socket.destroy();
  }

  restore(): void {
    this.#refusing = false;
  }

  async close(): Promise<void> {
    this.cut();
    await within("the proxy to close", new Promise<void>((resolveClose) => this.#server.close(() => resolveClose())));
  }
}
