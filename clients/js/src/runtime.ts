/**
 * The few host facilities the client needs, found on `globalThis` so that the package
 * compiles against ES2022 alone and runs in browsers, Node >= 20, Deno and Bun.
 */

/** The part of the WebSocket API the client uses (the WHATWG one, which `ws` also offers). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/**
 * A WebSocket class: the global `WebSocket`, or `WebSocket` from the `ws` package on
 * Node 20 without `--experimental-websocket`.
 */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown;

/** The readyState of an open socket. */
export const OPEN = 1;

export type TimerHandle = unknown;

interface Host {
  setTimeout(callback: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
  WebSocket?: WebSocketConstructor;
}

const host = globalThis as unknown as Host;

export function setTimer(callback: () => void, ms: number): TimerHandle {
  return host.setTimeout(callback, ms);
}

/** A timer that does not keep a Node process alive by itself (keepalive: the socket does). */
export function setWeakTimer(callback: () => void, ms: number): TimerHandle {
  const handle = host.setTimeout(callback, ms);
  const unref = (handle as { unref?: () => void } | null)?.unref;
  if (typeof unref === "function") unref.call(handle);
  return handle;
}

export function clearTimer(handle: TimerHandle | undefined): void {
  if (handle !== undefined) host.clearTimeout(handle);
}

export function globalWebSocket(): WebSocketConstructor | undefined {
  return typeof host.WebSocket === "function" ? host.WebSocket : undefined;
}

/**
 * `url` as a ws:// or wss:// URL: a path (`"/ws"`) is resolved against the page's location
 * in a browser, and http(s) becomes ws(s).
 */
export function resolveUrl(url: string): string {
  const location = (globalThis as { location?: { href?: unknown } }).location;
  const URLClass = (globalThis as { URL?: new (url: string, base?: string) => { href: string; protocol: string } }).URL;
  if (URLClass === undefined) return url;
  const base = typeof location?.href === "string" ? location.href : undefined;
  let parsed: { href: string; protocol: string };
  try {
    parsed = new URLClass(url, base);
  } catch {
    return url;
  }
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  return parsed.href;
}
