/**
 * websocketspec: a client for servers speaking the websocketspec wire protocol.
 *
 * ```ts
 * import { Client, ServerError } from "websocketspec";
 * ```
 */

export {
  Client,
  connect,
  type ClientEvents,
  type ClientOptions,
  type ClientState,
  type StateDetail,
  type Token,
  type Unsubscribe,
} from "./client.js";
export { backoffDelay, backoffPolicy, type Backoff, type ReconnectOptions } from "./backoff.js";
export {
  ClientError,
  ConnectionClosedError,
  QueueFullError,
  RequestTimeoutError,
  ServerError,
  type ErrorCode,
} from "./errors.js";
export type { WebSocketConstructor, WebSocketLike } from "./runtime.js";
export type * from "./types.js";
