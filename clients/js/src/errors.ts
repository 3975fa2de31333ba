/**
 * The client's errors.
 *
 * ```
 * ClientError                 anything this client rejects with
 * ├── ServerError             a `success: false` answer: .code .message .details
 * ├── ConnectionClosedError   not connected (fail-fast), the connection dropped while the
 * │                           request was in flight, the client was closed, or it gave up
 * │                           reconnecting
 * ├── QueueFullError          disconnected, and the bounded queue of waiting requests is full
 * └── RequestTimeoutError     no answer within the request timeout
 * ```
 */

import type { ErrorInfo, JSONValue } from "./types.js";

/** The error codes the server sends (docs/protocol.md); others may come from hooks. */
export type ErrorCode =
  | "invalid_message"
  | "invalid_message_type"
  | "invalid_operation"
  | "model_not_found"
  | "invalid_model"
  | "validation_error"
  | "invalid_filter"
  | "invalid_column"
  | "not_found"
  | "missing_subscription_id"
  | "subscription_not_found"
  | "unauthorized"
  | "hook_error"
  | "read_error"
  | "create_error"
  | "update_error"
  | "delete_error"
  | "internal_error"
  | "rate_limited"
  | "message_too_large"
  | "message_too_deep"
  | "response_too_large"
  | "too_many_subscriptions"
  | "too_many_filters"
  | "too_many_values"
  // Any other code a server hook chose, without losing completion of the known ones.
  | (string & {});

/** The base class of every error this client rejects with. */
export class ClientError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The server answered `success: false`. */
export class ServerError extends ClientError {
  /** The wire error code, e.g. `not_found`, `validation_error`. */
  readonly code: ErrorCode;
  /** Extra facts, e.g. `{ field: "email" }` for `validation_error`. */
  readonly details: Readonly<Record<string, JSONValue>> | undefined;

  constructor(error: ErrorInfo) {
    super(error.message);
    this.code = error.code;
    this.details = error.details;
  }

  /** The field a `validation_error` is about, if the server named one. */
  get field(): string | undefined {
    const field = this.details?.["field"];
    return typeof field === "string" ? field : undefined;
  }
}

/** The request could not be sent, or its connection closed before the answer came. */
export class ConnectionClosedError extends ClientError {
  /** The WebSocket close code, when a close caused it. */
  readonly code: number | undefined;

  constructor(message: string, code?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** The client is disconnected and already holds `maxQueue` requests waiting to be sent. */
export class QueueFullError extends ClientError {}

/** No answer within the request timeout. */
export class RequestTimeoutError extends ClientError {
  /** The timeout that elapsed, in milliseconds. */
  readonly timeout: number;

  constructor(message: string, timeout: number) {
    super(message);
    this.timeout = timeout;
  }
}
