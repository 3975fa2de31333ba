/**
 * The websocketspec client: one WebSocket carrying requests, answers and pushed changes.
 *
 * Theory of operation.
 *
 * States: `idle` → `connecting` → `open`; a lost connection goes to `reconnecting` (waiting
 * out a backoff delay) and back to `connecting`; `close()`, or giving up after
 * `reconnect.maxAttempts` failed attempts in a row, ends in `closed`, which is final.
 *
 * - Requests made while `open` are sent at once and remembered by id until their answer
 *   (or their timeout, or the loss of the connection, which rejects them with
 *   `ConnectionClosedError`: the client cannot know whether the server acted on them).
 * - Requests made while not `open` wait in a bounded FIFO queue and are sent, in order, on
 *   the next open (`whileDisconnected: "queue"`, the default), or are rejected at once
 *   (`"fail"`). Their timeout runs while they wait.
 * - A subscription is live from its first successful answer until it is unsubscribed or
 *   revoked. On every reopen each live subscription is subscribed again, with
 *   `options.resume_from` set to the last position it saw; unless the server answers
 *   `resumed: true` (and replays what was missed), the subscriber is told `reset`: changes
 *   may have been missed, read again.
 * - The token (a string, or a function called for each handshake and each refresh) goes in
 *   the handshake as the subprotocols `["websocketspec", "bearer.<token>"]`; on the server's
 *   `token_expired` notification a fresh one is sent in-band (`operation: "auth"`).
 *
 * Invariants: at most one socket is current; events of a replaced socket are ignored. A
 * subscription's server id is registered synchronously while its answer is handled, so no
 * notification that follows the answer can be missed. Callbacks run synchronously in message
 * order; an exception in one is reported on the `error` event and changes nothing else.
 */

import { type Backoff, type ReconnectOptions, backoffDelay, backoffPolicy } from "./backoff.js";
import {
  ClientError,
  ConnectionClosedError,
  QueueFullError,
  RequestTimeoutError,
  ServerError,
} from "./errors.js";
import {
  OPEN,
  type TimerHandle,
  type WebSocketConstructor,
  type WebSocketLike,
  clearTimer,
  globalWebSocket,
  resolveUrl,
  setTimer,
  setWeakTimer,
} from "./runtime.js";
import type {
  Change,
  EntityMeta,
  ErrorInfo,
  NotificationMessage,
  OutgoingMessage,
  Page,
  Position,
  ReadOneOptions,
  ReadOptions,
  RecordId,
  ResetChange,
  ResponseMessage,
  Row,
  RowChange,
  SubscribeOptions,
  WriteOptions,
} from "./types.js";

/** A bearer token, or a function returning one (called for every handshake and refresh). */
export type Token = string | (() => string | Promise<string>);

/** Where the client is: see the module's theory of operation. */
export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** What came with a state change. */
export interface StateDetail {
  /** `reconnecting`: the attempt about to be made (1 for the first after a loss). */
  attempt?: number;
  /** `reconnecting`: how long until that attempt, in milliseconds. */
  delay?: number;
  /** The close code of the connection that was lost, if there was one. */
  code?: number;
  reason?: string;
  /** `closed` after giving up: why. */
  error?: Error;
}

/** The client's events (see {@link Client.on}). */
export interface ClientEvents {
  /** The connection state changed. */
  state: (state: ClientState, detail: StateDetail) => void;
  /**
   * Something failed with nobody awaiting it: a token refresh the server refused, a
   * resubscription, a frame that was not JSON, an exception thrown by a callback.
   */
  error: (error: Error) => void;
  /** A connection-level push (`subscription_id: null`), e.g. `token_expired`. */
  notification: (message: NotificationMessage) => void;
  /**
   * The server accepted a token sent in-band (after `token_expired`, or through
   * `authenticate()`); `result` is its answer, e.g. `{authenticated: true, expires_at}`.
   */
  authenticated: (result: Record<string, unknown>) => void;
}

/** Options of a {@link Client}. */
export interface ClientOptions {
  /** Sent in the handshake as the subprotocol `bearer.<token>`; needs the server's BearerAuth. */
  token?: Token;
  /**
   * The WebSocket class; by default the global one (browsers, Deno, Bun, Node >= 22, Node
   * 20 with `--experimental-websocket`). On Node 20 pass `WebSocket` from the `ws` package.
   */
  WebSocket?: WebSocketConstructor;
  /** Subprotocols to offer instead of the default (`websocketspec` + the token's). */
  protocols?: string[];
  /** Reconnect with exponential backoff and jitter (the default), or `false` not to. */
  reconnect?: ReconnectOptions | false;
  /** While disconnected, `queue` requests until the next open (default) or `fail` them. */
  whileDisconnected?: "queue" | "fail";
  /** The most requests waiting while disconnected; past it, `QueueFullError`. Default 100. */
  maxQueue?: number;
  /** Milliseconds before a request without answer fails (queue time included). Default 30 000; 0: never. */
  requestTimeout?: number;
  /** Milliseconds a handshake may take before the attempt counts as failed. Default 10 000. */
  connectTimeout?: number;
  /**
   * Send a `ping` message this often (milliseconds) while open, and reconnect when its
   * `pong` has not come by the next one: finds connections that died silently. Default
   * 30 000; 0 turns it off.
   */
  keepaliveInterval?: number;
  /** The schema of every call that names none (the server's default when absent). */
  schema?: string;
}

/** Ends a subscription. Also tells its current server-side id. */
export interface Unsubscribe {
  (): Promise<void>;
  /** The server's id for the subscription on the current connection, or null between them. */
  readonly subscriptionId: string | null;
}

interface Pending {
  message: OutgoingMessage;
  resolve: (answer: ResponseMessage) => void;
  reject: (error: Error) => void;
  /** Runs synchronously when the answer arrives, before any later frame is handled. */
  onAnswer: ((answer: ResponseMessage) => void) | undefined;
  timer: TimerHandle | undefined;
}

interface Subscription {
  entity: string;
  schema: string | undefined;
  options: Record<string, unknown>;
  snapshot: boolean;
  resume: boolean;
  callback: (change: Change<unknown>) => void;
  serverId: string | null;
  position: Position | null;
  /** Notifications held while the rows of a snapshot are being read. */
  buffer: RowChange<unknown>[] | null;
  closed: boolean;
}

type Listeners = { [E in keyof ClientEvents]: Set<ClientEvents[E]> };

const DEFAULT_SUBPROTOCOL = "websocketspec";
const SNAPSHOT_PAGE = 1000;

/**
 * A websocketspec client.
 *
 * ```ts
 * const client = new Client("ws://127.0.0.1:8080/ws");
 * await client.connect();
 * const users = await client.read<User>("users", { filters: [{ column: "status", operator: "eq", value: "active" }] });
 * const unsubscribe = await client.subscribe<User>("users", {}, (change) => console.log(change));
 * ```
 */
export class Client {
  /** The server's WebSocket URL. */
  readonly url: string;

  readonly #options: ClientOptions;
  readonly #backoff: Backoff | null;
  readonly #WebSocket: WebSocketConstructor;
  #token: Token | undefined;
  #state: ClientState = "idle";
  #socket: WebSocketLike | null = null;
  #counter = 0;
  /** Failed connection attempts in a row. */
  #failures = 0;
  #reconnectTimer: TimerHandle | undefined;
  #keepaliveTimer: TimerHandle | undefined;
  #keepaliveId: string | null = null;
  readonly #pending = new Map<string, Pending>();
  readonly #queue: Pending[] = [];
  readonly #subscriptions = new Set<Subscription>();
  readonly #byServerId = new Map<string, Subscription>();
  readonly #listeners: Listeners = {
    state: new Set(),
    error: new Set(),
    notification: new Set(),
    authenticated: new Set(),
  };
  #connectWaiters: { resolve: () => void; reject: (error: Error) => void }[] = [];
  #refreshing: Promise<void> | null = null;
  /** Whether a connection has opened before (so subscriptions must be renewed). */
  #everOpened = false;
  /** Whether the server has put a position in a subscribe answer (so it can resume). */
  #serverHasPositions = false;

  /**
   * @param url - `ws://…` or `wss://…`; in a browser a path such as `"/ws"` means the page's
   *   own host.
   */
  constructor(url: string, options: ClientOptions = {}) {
    this.url = resolveUrl(url);
    this.#options = options;
    this.#token = options.token;
    this.#backoff = options.reconnect === false ? null : backoffPolicy(options.reconnect);
    const WebSocketClass = options.WebSocket ?? globalWebSocket();
    if (WebSocketClass === undefined) {
      throw new TypeError(
        "no WebSocket class: pass one as the WebSocket option (on Node 20: " +
          'import { WebSocket } from "ws"; or run node with --experimental-websocket)',
      );
    }
    this.#WebSocket = WebSocketClass;
    const maxQueue = options.maxQueue ?? 100;
    if (!(maxQueue >= 0)) throw new RangeError(`expected maxQueue >= 0, got ${maxQueue}`);
  }

  /** The connection state. */
  get state(): ClientState {
    return this.#state;
  }

  /** Listen to an event; returns a function that stops listening. */
  on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): () => void {
    const listeners = this.#listeners[event] as Set<ClientEvents[E]>;
    listeners.add(listener);
    return () => {
      listeners.delete(listener);
    };
  }

  /**
   * Open the connection (if not yet) and wait until it is open. Failed attempts are retried
   * with the reconnect policy; rejects with `ConnectionClosedError` when the client gives
   * up or is closed.
   */
  connect(): Promise<void> {
    if (this.#state === "open") return Promise.resolve();
    if (this.#state === "closed") {
      return Promise.reject(new ConnectionClosedError("the client is closed"));
    }
    const opened = new Promise<void>((resolve, reject) => {
      this.#connectWaiters.push({ resolve, reject });
    });
    if (this.#state === "idle") void this.#open();
    return opened;
  }

  /**
   * Close the connection for good: every waiting request is rejected with
   * `ConnectionClosedError` and no reconnect follows. Resolves once the socket has closed
   * (or after a second).
   */
  close(): Promise<void> {
    if (this.#state === "closed") return Promise.resolve();
    const socket = this.#socket;
    this.#finish(new ConnectionClosedError("the client is closed"));
    if (socket === null) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimer(done, 1000);
      function done(): void {
        clearTimer(timer);
        resolve();
      }
      socket.onclose = done;
      try {
        socket.close(1000, "client closed");
      } catch {
        done();
      }
    });
  }

  // -- operations ------------------------------------------------------------------------

  /** Read the rows of `entity` matching `options` (one page: `limit`, `offset`). */
  async read<T extends object = Row>(entity: string, options: ReadOptions<T> = {}): Promise<T[]> {
    return (await this.readPage<T>(entity, options)).rows;
  }

  /** Read one page of `entity` with the server's counts (`total` matching rows, …). */
  async readPage<T extends object = Row>(
    entity: string,
    options: ReadOptions<T> = {},
  ): Promise<Page<T>> {
    const { schema, ...query } = options;
    const answer = await this.request({
      type: "request",
      operation: "read",
      entity,
      ...this.#schema(schema),
      options: query,
    });
    const rows = Array.isArray(answer.data) ? (answer.data as T[]) : [];
    const meta = answer.metadata ?? {};
    const number = (key: string, fallback: number): number => {
      const value = meta[key];
      return typeof value === "number" ? value : fallback;
    };
    return {
      rows,
      total: number("total", rows.length),
      count: number("count", rows.length),
      limit: number("limit", rows.length),
      offset: number("offset", options.offset ?? 0),
    };
  }

  /** Read the row of `entity` whose primary key is `id`; `ServerError` `not_found` if none. */
  async readOne<T extends object = Row>(
    entity: string,
    id: RecordId,
    options: ReadOneOptions<T> = {},
  ): Promise<T> {
    const { schema, ...query } = options;
    const answer = await this.request({
      type: "request",
      operation: "read",
      entity,
      ...this.#schema(schema),
      record_id: id,
      ...(Object.keys(query).length > 0 ? { options: query } : {}),
    });
    return answer.data as T;
  }

  /** Create a row; resolves with the stored row (database defaults filled in). */
  async create<T extends object = Row>(
    entity: string,
    data: Partial<T>,
    options: WriteOptions<T> = {},
  ): Promise<T> {
    const answer = await this.request({
      type: "request",
      operation: "create",
      entity,
      ...this.#schema(options.schema),
      data,
      ...idempotency(options),
    });
    return answer.data as T;
  }

  /** Change only the keys in `patch` of the row `id`; resolves with the updated row. */
  async update<T extends object = Row>(
    entity: string,
    id: RecordId,
    patch: Partial<T>,
    options: WriteOptions<T> = {},
  ): Promise<T> {
    const answer = await this.request({
      type: "request",
      operation: "update",
      entity,
      ...this.#schema(options.schema),
      record_id: id,
      data: patch,
      ...(options.filters !== undefined ? { options: { filters: options.filters } } : {}),
      ...idempotency(options),
    });
    return answer.data as T;
  }

  /** Delete the row `id`; resolves with the deleted row. */
  async delete<T extends object = Row>(
    entity: string,
    id: RecordId,
    options: WriteOptions<T> = {},
  ): Promise<T> {
    const answer = await this.request({
      type: "request",
      operation: "delete",
      entity,
      ...this.#schema(options.schema),
      record_id: id,
      ...(options.filters !== undefined ? { options: { filters: options.filters } } : {}),
      ...idempotency(options),
    });
    return answer.data as T;
  }

  /** Describe `entity`: primary key, columns and their types, relations. */
  async meta(entity: string, options: { schema?: string } = {}): Promise<EntityMeta> {
    const answer = await this.request({
      type: "request",
      operation: "meta",
      entity,
      ...this.#schema(options.schema),
    });
    return answer.data as EntityMeta;
  }

  /**
   * Send a new token in-band (`operation: "auth"`), replacing the connection's identity
   * without reconnecting. Without an argument the `token` option is used (its function is
   * called). A string given here is also used for later handshakes, unless the `token`
   * option is a function. While disconnected it is only kept for the next handshake.
   */
  async authenticate(token?: string): Promise<Record<string, unknown>> {
    if (token !== undefined && typeof this.#token !== "function") this.#token = token;
    const value = token ?? (await this.#currentToken());
    if (value === undefined) throw new TypeError("no token: pass one or set the token option");
    if (this.#state !== "open") return {};
    return this.#sendToken(value);
  }

  async #sendToken(token: string): Promise<Record<string, unknown>> {
    const answer = await this.request({ type: "request", operation: "auth", data: { token } });
    const result = (answer.data ?? {}) as Record<string, unknown>;
    this.#emit("authenticated", result);
    return result;
  }

  /** Send a `ping` message; resolves with the round trip in milliseconds. */
  async ping(): Promise<number> {
    const started = Date.now();
    await this.request({ type: "ping" });
    return Date.now() - started;
  }

  /**
   * Send any message (an `id` is added) and resolve with its answer; rejects with
   * `ServerError` when the answer says `success: false`.
   */
  request(message: Omit<OutgoingMessage, "id">): Promise<ResponseMessage> {
    return this.#send({ id: this.#nextId(), ...message }, undefined);
  }

  /**
   * Subscribe to the changes of `entity` that match `options.filters`; `callback` receives
   * each {@link Change}. Resolves, once the server has accepted it, with the function that
   * ends it. The subscription outlives reconnects: see {@link SubscribeOptions}.
   */
  subscribe<T extends object = Row>(
    entity: string,
    options: SubscribeOptions<T>,
    callback: (change: Change<T>) => void,
  ): Promise<Unsubscribe> {
    const { schema, snapshot, resume, ...query } = options;
    const sub: Subscription = {
      entity,
      schema: schema ?? this.#options.schema,
      options: { ...query },
      snapshot: snapshot === true,
      resume: resume !== false,
      callback: callback as (change: Change<unknown>) => void,
      serverId: null,
      position: null,
      buffer: null,
      closed: false,
    };
    return this.#subscribe(sub, "subscribed").then(() => {
      this.#subscriptions.add(sub);
      const unsubscribe = (): Promise<void> => this.#unsubscribe(sub);
      Object.defineProperty(unsubscribe, "subscriptionId", { get: () => sub.serverId });
      return unsubscribe as Unsubscribe;
    });
  }

  // -- subscriptions ---------------------------------------------------------------------

  #subscribe(sub: Subscription, reason: "subscribed" | "reconnected"): Promise<void> {
    const options: Record<string, unknown> = { ...sub.options };
    // After a reconnect, resume from the last position seen when there is one (the server
    // replays what was missed, or says `reset`); otherwise start afresh, with the rows if
    // the subscriber wants them. The server takes one or the other, never both.
    const resuming = reason === "reconnected" && sub.resume && sub.position !== null;
    if (resuming) options["resume_from"] = { ...sub.position };
    else if (sub.snapshot) options["snapshot"] = true;
    const message: OutgoingMessage = {
      id: this.#nextId(),
      type: "subscription",
      operation: "subscribe",
      entity: sub.entity,
      ...(sub.schema !== undefined ? { schema: sub.schema } : {}),
      options,
    };
    return this.#send(message, (answer) => {
      // Runs before any later frame is handled: the id must be known for what follows.
      if (answer.success !== true) return;
      const data = (answer.data ?? {}) as Record<string, unknown>;
      const serverId = data["subscription_id"];
      if (typeof serverId !== "string") return;
      sub.serverId = serverId;
      this.#byServerId.set(serverId, sub);
      const position = asPosition(data["position"]);
      // A server that numbers changes (its subscribe answers carry positions) resumes:
      // it replays what was missed, or sends `reset`. Its answer's position, if any, is
      // the stream's head: taking it would drop the replay as duplicates. A server that
      // never gave a position cannot resume: the subscriber is told `reset`.
      if (resuming && (data["resumed"] === true || this.#serverHasPositions)) return;
      if (position !== null) {
        this.#serverHasPositions = true;
        sub.position = position;
      }
      if (!sub.snapshot && reason === "subscribed") return;
      const rows = data["rows"];
      // Hold the notifications that follow until the subscriber has been told `reset`:
      // after subscribe() has resolved, and with a snapshot after all its rows are in.
      sub.buffer = [];
      setTimer(() => {
        if (sub.closed || sub.serverId !== serverId) return;
        if (sub.snapshot) {
          const first = Array.isArray(rows) ? (rows as unknown[]) : null;
          const total = data["total"];
          if (first !== null && (typeof total !== "number" || total <= first.length)) {
            this.#release(sub, { operation: "reset", reason, rows: first });
          } else {
            // No snapshot from this server, or only its first page: read the rest.
            void this.#readSnapshot(sub, { operation: "reset", reason }, first ?? []);
          }
          return;
        }
        this.#release(sub, { operation: "reset", reason });
      }, 0);
    }).then(() => {
      if (sub.closed) void this.#unsubscribe(sub, true);
    });
  }

  /** Tell the subscriber `reset`, then what arrived meanwhile. */
  #release(sub: Subscription, reset: ResetChange<unknown>): void {
    const held = sub.buffer ?? [];
    sub.buffer = null;
    this.#deliver(sub, reset);
    for (const change of held) this.#deliver(sub, change);
  }

  /**
   * Read the rows of a snapshot subscription page by page, holding its notifications
   * meanwhile and applying them after the rows: a change the pages already show is applied
   * again, in order, which leaves a list kept by primary key right.
   */
  async #readSnapshot(sub: Subscription, reset: ResetChange<unknown>, rows: unknown[] = []): Promise<void> {
    sub.buffer ??= [];
    const connectionId = sub.serverId;
    try {
      for (;;) {
        const page = await this.readPage(sub.entity, {
          ...(sub.schema !== undefined ? { schema: sub.schema } : {}),
          ...(sub.options as ReadOptions),
          limit: SNAPSHOT_PAGE,
          offset: rows.length,
        });
        rows.push(...page.rows);
        if (page.rows.length === 0 || page.rows.length < page.limit || rows.length >= page.total) {
          break;
        }
      }
    } catch (error) {
      if (sub.serverId !== connectionId || sub.closed) return; // a reconnect resyncs again
      this.#emit("error", asError(error));
      this.#release(sub, reset);
      return;
    }
    if (sub.closed || sub.serverId !== connectionId) return;
    this.#release(sub, { ...reset, rows });
  }

  async #unsubscribe(sub: Subscription, force = false): Promise<void> {
    if (sub.closed && !force) return;
    sub.closed = true;
    this.#subscriptions.delete(sub);
    const serverId = sub.serverId;
    sub.serverId = null;
    if (serverId === null) return;
    this.#byServerId.delete(serverId);
    if (this.#state !== "open") return; // the server forgot it with the connection
    try {
      await this.#send(
        { id: this.#nextId(), type: "subscription", operation: "unsubscribe", subscription_id: serverId },
        undefined,
      );
    } catch (error) {
      if (error instanceof ServerError && error.code === "subscription_not_found") return;
      if (error instanceof ConnectionClosedError) return;
      throw error;
    }
  }

  #resubscribeAll(): void {
    for (const sub of this.#subscriptions) {
      sub.buffer = null;
      this.#subscribe(sub, "reconnected").catch((error: unknown) => {
        if (sub.closed) return;
        if (error instanceof ServerError) {
          // The server refuses it now (e.g. the identity may no longer see it).
          this.#drop(sub);
          this.#deliver(sub, { operation: "revoked", reason: error.code, message: error.message });
        } else if (error instanceof RequestTimeoutError && this.#socket !== null) {
          this.#emit("error", error);
          this.#lose(this.#socket, 4000, "resubscription timed out");
        }
        // ConnectionClosedError: the next open subscribes it again.
      });
    }
  }

  #drop(sub: Subscription): void {
    sub.closed = true;
    this.#subscriptions.delete(sub);
    if (sub.serverId !== null) this.#byServerId.delete(sub.serverId);
    sub.serverId = null;
  }

  #deliver(sub: Subscription, change: Change<unknown>): void {
    try {
      sub.callback(change);
    } catch (error) {
      this.#emit("error", asError(error));
    }
  }

  #onNotification(message: NotificationMessage): void {
    if (message.subscription_id === null || message.subscription_id === undefined) {
      if (message.operation === "token_expired") void this.#refresh();
      this.#emit("notification", message);
      return;
    }
    const sub = this.#byServerId.get(message.subscription_id);
    if (sub === undefined || sub.closed) return;
    const meta = message.metadata ?? {};
    switch (message.operation) {
      case "create":
      case "update":
      case "delete": {
        const position = asPosition(meta);
        if (position !== null) {
          const last = sub.position;
          if (last !== null && last.epoch === position.epoch && position.seq <= last.seq) return;
          sub.position = position;
        }
        const change: RowChange<unknown> = {
          operation: message.operation,
          row: message.data,
          schema: message.schema ?? sub.schema ?? "public",
          entity: message.entity ?? sub.entity,
          timestamp: message.timestamp ?? "",
        };
        const kind = meta["change"];
        if (kind === "enter" || kind === "stay" || kind === "leave") change.change = kind;
        const source = meta["source_operation"];
        if (source === "create" || source === "update" || source === "delete") {
          change.sourceOperation = source;
        }
        if (position !== null) change.position = position;
        change.metadata = meta;
        if (sub.buffer !== null) sub.buffer.push(change);
        else this.#deliver(sub, change);
        return;
      }
      case "reset": {
        sub.position = null;
        const reason = typeof meta["reason"] === "string" ? meta["reason"] : undefined;
        const reset: ResetChange<unknown> = {
          operation: "reset",
          reason: "server",
          ...(reason !== undefined ? { message: reason } : {}),
        };
        if (sub.snapshot) void this.#readSnapshot(sub, reset);
        else this.#deliver(sub, reset);
        return;
      }
      case "revoked": {
        if (meta["reason"] === "token_expired") {
          // The server revokes everything and closes with 4001 when a token was not
          // refreshed in time: the reconnect, with a fresh token, brings it back (and
          // tells the subscriber `reset`).
          this.#byServerId.delete(message.subscription_id);
          sub.serverId = null;
          return;
        }
        this.#drop(sub);
        this.#deliver(sub, {
          operation: "revoked",
          reason: typeof meta["reason"] === "string" ? meta["reason"] : "revoked",
          message: typeof meta["message"] === "string" ? meta["message"] : "",
        });
        return;
      }
      default:
        this.#emit("notification", message);
    }
  }

  /** Answer `token_expired`: send a fresh token in-band (one refresh at a time). */
  #refresh(): Promise<void> {
    this.#refreshing ??= (async () => {
      try {
        const token = await this.#currentToken();
        if (token === undefined) {
          throw new ClientError("the server says the token expired, and there is no token option");
        }
        if (this.#state === "open") await this.#sendToken(token);
      } catch (error) {
        this.#emit("error", asError(error));
      } finally {
        this.#refreshing = null;
      }
    })();
    return this.#refreshing;
  }

  async #currentToken(): Promise<string | undefined> {
    const token = this.#token;
    return typeof token === "function" ? await token() : token;
  }

  // -- sending ---------------------------------------------------------------------------

  #send(
    message: OutgoingMessage,
    onAnswer: ((answer: ResponseMessage) => void) | undefined,
  ): Promise<ResponseMessage> {
    return new Promise<ResponseMessage>((resolve, reject) => {
      const pending: Pending = { message, resolve, reject, onAnswer, timer: undefined };
      if (this.#state === "closed") {
        reject(new ConnectionClosedError("the client is closed"));
        return;
      }
      const timeout = this.#options.requestTimeout ?? 30_000;
      if (timeout > 0) {
        pending.timer = setTimer(() => {
          this.#pending.delete(message.id);
          const queued = this.#queue.indexOf(pending);
          if (queued >= 0) this.#queue.splice(queued, 1);
          reject(
            new RequestTimeoutError(
              `no answer to ${message.operation ?? message.type} within ${timeout} ms`,
              timeout,
            ),
          );
        }, timeout);
      }
      if (this.#state === "open" && this.#socket !== null) {
        this.#transmit(this.#socket, pending);
        return;
      }
      if ((this.#options.whileDisconnected ?? "queue") === "fail") {
        clearTimer(pending.timer);
        reject(new ConnectionClosedError(`not connected (${this.#state})`));
        if (this.#state === "idle") void this.#open();
        return;
      }
      if (this.#queue.length >= (this.#options.maxQueue ?? 100)) {
        clearTimer(pending.timer);
        reject(
          new QueueFullError(
            `not connected (${this.#state}) and ${this.#queue.length} requests already wait`,
          ),
        );
        return;
      }
      this.#queue.push(pending);
      if (this.#state === "idle") void this.#open();
    });
  }

  #transmit(socket: WebSocketLike, pending: Pending): void {
    this.#pending.set(pending.message.id, pending);
    try {
      socket.send(JSON.stringify(pending.message));
    } catch (error) {
      this.#pending.delete(pending.message.id);
      clearTimer(pending.timer);
      pending.reject(new ConnectionClosedError("the message could not be sent", undefined, { cause: error }));
    }
  }

  #onAnswer(answer: ResponseMessage): void {
    if (answer.id === null || answer.id === undefined) {
      const error = answer.error;
      this.#emit(
        "error",
        error !== undefined ? new ServerError(error) : new ClientError("an answer without id"),
      );
      return;
    }
    const pending = this.#pending.get(String(answer.id));
    if (pending === undefined) return; // timed out meanwhile
    this.#pending.delete(String(answer.id));
    clearTimer(pending.timer);
    try {
      pending.onAnswer?.(answer);
    } catch (error) {
      this.#emit("error", asError(error));
    }
    if (answer.type === "pong" || answer.success === true) {
      pending.resolve(answer);
    } else {
      const error: ErrorInfo = answer.error ?? {
        code: "internal_error",
        message: "the server answered success: false without an error",
      };
      pending.reject(new ServerError(error));
    }
  }

  // -- the connection --------------------------------------------------------------------

  async #open(): Promise<void> {
    this.#setState("connecting", {});
    let protocols: string[] | undefined = this.#options.protocols;
    let socket: WebSocketLike;
    try {
      if (protocols === undefined) {
        const token = await this.#currentToken();
        if (token !== undefined) protocols = [DEFAULT_SUBPROTOCOL, `bearer.${token}`];
      }
      if ((this.#state as ClientState) === "closed") return;
      socket = new this.#WebSocket(this.url, protocols) as WebSocketLike;
    } catch (error) {
      this.#emit("error", asError(error));
      this.#retry(undefined, undefined, asError(error), true);
      return;
    }
    this.#socket = socket;
    const timer = setTimer(() => {
      if (this.#socket === socket && this.#state === "connecting") {
        this.#lose(socket, undefined, "the handshake timed out");
      }
    }, this.#options.connectTimeout ?? 10_000);
    socket.onopen = () => {
      clearTimer(timer);
      if (this.#socket !== socket) return;
      this.#onOpen(socket);
    };
    socket.onmessage = (event) => {
      if (this.#socket !== socket) return;
      this.#onFrame(event.data);
    };
    socket.onclose = (event) => {
      clearTimer(timer);
      if (this.#socket !== socket) return;
      this.#lose(socket, event.code, event.reason);
    };
    socket.onerror = () => {
      // A close event follows; it carries what is known.
    };
  }

  #onOpen(socket: WebSocketLike): void {
    const reopened = this.#everOpened;
    this.#everOpened = true;
    this.#failures = 0;
    this.#setState("open", {});
    for (const waiter of this.#connectWaiters.splice(0)) waiter.resolve();
    if (reopened) this.#resubscribeAll();
    for (const pending of this.#queue.splice(0)) this.#transmit(socket, pending);
    this.#scheduleKeepalive(socket);
  }

  #onFrame(data: unknown): void {
    let message: unknown;
    try {
      message = JSON.parse(typeof data === "string" ? data : String(data));
    } catch (error) {
      this.#emit("error", new ClientError("the server sent a frame that is not JSON", { cause: error }));
      return;
    }
    if (typeof message !== "object" || message === null) return;
    const type = (message as { type?: unknown }).type;
    if (type === "response" || type === "pong") this.#onAnswer(message as ResponseMessage);
    else if (type === "notification") this.#onNotification(message as NotificationMessage);
  }

  /** The current socket is gone (closed, failed, timed out): clean up and maybe retry. */
  #lose(socket: WebSocketLike, code: number | undefined, reason: string | undefined): void {
    if (this.#socket !== socket) return;
    const failed = this.#state !== "open";
    this.#socket = null;
    detach(socket);
    if (socket.readyState <= OPEN) {
      try {
        socket.close(4000, reason?.slice(0, 100));
      } catch {
        // Already closing.
      }
    }
    clearTimer(this.#keepaliveTimer);
    this.#keepaliveId = null;
    const lost = new ConnectionClosedError(
      `the connection closed${code !== undefined ? ` (${code}${reason ? ` ${reason}` : ""})` : ""}`,
      code,
    );
    for (const pending of [...this.#pending.values()]) {
      clearTimer(pending.timer);
      pending.reject(lost);
    }
    this.#pending.clear();
    for (const sub of this.#subscriptions) {
      if (sub.serverId !== null) this.#byServerId.delete(sub.serverId);
      sub.serverId = null;
      sub.buffer = null;
    }
    this.#retry(code, reason, lost, failed);
  }

  /**
   * Schedule the next attempt, or give up. `failed`: the attempt never opened (as opposed
   * to an open connection that was lost); `maxAttempts` failures in a row end the client.
   */
  #retry(code: number | undefined, reason: string | undefined, error: Error, failed: boolean): void {
    if (this.#state === "closed") return;
    if (failed) this.#failures += 1;
    const policy = this.#backoff;
    if (policy === null || this.#failures >= policy.maxAttempts) {
      const attempts = this.#failures;
      this.#finish(
        new ConnectionClosedError(
          policy === null
            ? `the connection closed and reconnect is off: ${error.message}`
            : `gave up after ${attempts} failed attempt${attempts === 1 ? "" : "s"}: ${error.message}`,
          code,
          { cause: error },
        ),
      );
      return;
    }
    const delay = backoffDelay(policy, Math.max(1, this.#failures));
    this.#setState("reconnecting", {
      attempt: this.#failures + 1,
      delay,
      ...(code !== undefined ? { code } : {}),
      ...(reason !== undefined ? { reason } : {}),
    });
    this.#reconnectTimer = setTimer(() => {
      this.#reconnectTimer = undefined;
      if (this.#state === "reconnecting") void this.#open();
    }, delay);
  }

  /** Enter `closed` for good: reject everything that waits. */
  #finish(error: ConnectionClosedError): void {
    const socket = this.#socket;
    this.#socket = null;
    if (socket !== null) detach(socket);
    clearTimer(this.#reconnectTimer);
    clearTimer(this.#keepaliveTimer);
    this.#setState("closed", error.message === "the client is closed" ? {} : { error });
    for (const pending of [...this.#pending.values(), ...this.#queue.splice(0)]) {
      clearTimer(pending.timer);
      pending.reject(error);
    }
    this.#pending.clear();
    for (const waiter of this.#connectWaiters.splice(0)) waiter.reject(error);
    for (const sub of this.#subscriptions) sub.closed = true;
    this.#subscriptions.clear();
    this.#byServerId.clear();
  }

  #scheduleKeepalive(socket: WebSocketLike): void {
    const interval = this.#options.keepaliveInterval ?? 30_000;
    if (!(interval > 0)) return;
    this.#keepaliveTimer = setWeakTimer(() => {
      if (this.#socket !== socket) return;
      if (this.#keepaliveId !== null && this.#pending.has(this.#keepaliveId)) {
        this.#lose(socket, undefined, "no pong to the keepalive ping");
        return;
      }
      const id = this.#nextId();
      this.#keepaliveId = id;
      this.#send({ id, type: "ping" }, undefined).catch(() => {
        // The loss of the connection is handled where it is seen.
      });
      this.#scheduleKeepalive(socket);
    }, interval);
  }

  // -- helpers ---------------------------------------------------------------------------

  #setState(state: ClientState, detail: StateDetail): void {
    this.#state = state;
    this.#emit("state", state, detail);
  }

  #emit<E extends keyof ClientEvents>(event: E, ...args: Parameters<ClientEvents[E]>): void {
    for (const listener of [...this.#listeners[event]]) {
      try {
        (listener as (...values: Parameters<ClientEvents[E]>) => void)(...args);
      } catch (error) {
        if (event !== "error") this.#emit("error", asError(error));
      }
    }
  }

  #nextId(): string {
    this.#counter += 1;
    return `js-${this.#counter}`;
  }

  #schema(schema: string | undefined): { schema?: string } {
    const value = schema ?? this.#options.schema;
    return value !== undefined ? { schema: value } : {};
  }
}

/** Create a client and wait until it is connected. */
export async function connect(url: string, options: ClientOptions = {}): Promise<Client> {
  const client = new Client(url, options);
  await client.connect();
  return client;
}

function idempotency(options: { idempotencyKey?: string }): { metadata?: Record<string, unknown> } {
  const key = options.idempotencyKey;
  return key !== undefined ? { metadata: { idempotency_key: key } } : {};
}

/** Ignore a socket from now on. `ws` throws an error event nobody listens to: keep a no-op. */
function detach(socket: WebSocketLike): void {
  socket.onopen = null;
  socket.onmessage = null;
  socket.onclose = null;
  socket.onerror = () => {};
}

function asPosition(value: unknown): Position | null {
  if (typeof value !== "object" || value === null) return null;
  const { seq, epoch } = value as { seq?: unknown; epoch?: unknown };
  if (typeof seq !== "number" || typeof epoch !== "string") return null;
  return { seq, epoch };
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new ClientError(String(error));
}
