/**
 * The wire protocol's shapes (docs/protocol.md) and the typed query options built on them.
 *
 * Entity types are plain object types describing a row as JSON carries it (datetimes and
 * decimals are strings, bytes base64): `interface User { id: number; name: string }`.
 * Every query type takes the entity type as a parameter, so column names and filter values
 * are checked against it; the default, {@link Row}, accepts any column.
 */

/** Any JSON value. */
export type JSONValue =
  | string
  | number
  | boolean
  | null
  | JSONValue[]
  | { [key: string]: JSONValue };

/** A row of an entity nobody typed: any column, any value. */
export type Row = Record<string, unknown>;

/** The column names of an entity type. */
export type Column<T> = keyof T & string;

/** A primary key as the wire carries it: a string or number, an object for composite keys. */
export type RecordId = string | number | Record<string, string | number>;

// -- filters ------------------------------------------------------------------------------

/** `eq`/`neq`: equality; a `null` value means `is_null`/`is_not_null`. */
export type EqualityOperator = "eq" | "neq";
/** Ordered comparisons (text compares by code point). */
export type OrderOperator = "gt" | "gte" | "lt" | "lte";
/** Membership in a list; `in []` matches nothing. */
export type ListOperator = "in" | "not_in";
/** Null checks; the value is ignored. */
export type NullOperator = "is_null" | "is_not_null";
/** Text matching: `like`/`ilike` patterns (`%`, `_`, `\` escapes); the others match literally. */
export type TextOperator = "like" | "ilike" | "contains" | "startswith" | "endswith";
/** Every operator the server knows. */
export type Operator =
  | EqualityOperator
  | OrderOperator
  | ListOperator
  | NullOperator
  | "between"
  | TextOperator;

/** `"OR"` joins a filter to the previous one: `[A, B(OR), C]` is `(A OR B) AND C`. */
export type LogicOperator = "AND" | "OR";

type Present<V> = Exclude<V, null | undefined>;
type IsUnknown<V> = [unknown] extends [V] ? true : false;

interface FilterBase<K extends string> {
  column: K;
  logic_operator?: LogicOperator;
}

/** The filters that can apply to column `K` whose values are of type `V`. */
export type FilterOn<K extends string, V> =
  | (FilterBase<K> & { operator: EqualityOperator; value: Present<V> | null })
  | (FilterBase<K> & { operator: OrderOperator; value: Present<V> })
  | (FilterBase<K> & { operator: ListOperator; value: readonly Present<V>[] })
  | (FilterBase<K> & { operator: "between"; value: readonly [Present<V>, Present<V>] })
  | (FilterBase<K> & { operator: NullOperator; value?: null })
  | (IsUnknown<V> extends true
      ? FilterBase<K> & { operator: TextOperator; value: string }
      : [Present<V>] extends [string]
        ? FilterBase<K> & { operator: TextOperator; value: string }
        : never);

/**
 * One filter on an entity of type `T`: the column must be one of `T`'s, the value must fit
 * the operator and the column (a list for `in`, a pair for `between`, a string for text
 * operators on text columns).
 */
export type Filter<T extends object = Row> = {
  [K in Column<T>]-?: FilterOn<K, T[K]>;
}[Column<T>];

/** Sort by a column; NULLs last ascending, first descending; the primary key ends the order. */
export interface Sort<T extends object = Row> {
  column: Column<T>;
  direction?: "asc" | "desc";
}

/** Nest a relation's rows in each row, with their own query options. */
export interface Preload {
  relation: string;
  columns?: string[];
  filters?: Filter[];
  sort?: Sort[];
  limit?: number;
}

/** Options of a list read. */
export interface ReadOptions<T extends object = Row> {
  /** The registry's namespace; the server's default (`public`) when absent. */
  schema?: string;
  filters?: readonly Filter<T>[];
  /** The keys each row has, exactly. */
  columns?: readonly Column<T>[];
  sort?: readonly Sort<T>[];
  /** Page size; the server clamps it to its maximum (metadata.limit says what applied). */
  limit?: number;
  offset?: number;
  preload?: readonly Preload[];
}

/** Options of a single-row read (`readOne`). */
export interface ReadOneOptions<T extends object = Row> {
  schema?: string;
  filters?: readonly Filter<T>[];
  columns?: readonly Column<T>[];
  preload?: readonly Preload[];
}

/** Options of a create, update or delete. */
export interface WriteOptions<T extends object = Row> {
  schema?: string;
  /** Update and delete: only a row that matches them is changed (else `not_found`). */
  filters?: readonly Filter<T>[];
  /**
   * Apply the write once per key (1–255 characters, per identity): a retry with the same
   * key answers the first answer and changes nothing. Retry a write whose connection was
   * lost with the same key to be sure it happened exactly once.
   */
  idempotencyKey?: string;
}

/** A page of a list read, with the server's counts. */
export interface Page<T> {
  rows: T[];
  /** Every row matching the filters. */
  total: number;
  /** The rows in this page. */
  count: number;
  /** The page size that applied. */
  limit: number;
  offset: number;
}

/** A position in an entity's change stream: `metadata.seq` and `metadata.epoch`. */
export interface Position {
  seq: number;
  epoch: string;
}

/** Options of a subscription. */
export interface SubscribeOptions<T extends object = Row> {
  schema?: string;
  filters?: readonly Filter<T>[];
  /** Limits each notification's row to these keys (the primary key is always included). */
  columns?: readonly Column<T>[];
  /**
   * Start with the matching rows: the first change is a `reset` carrying `rows`, and every
   * later resync (reconnect, server reset) brings the rows again. Asked of the server as
   * `options.snapshot`; a server without snapshots is read instead (every page), with the
   * notifications that arrive meanwhile applied after the rows.
   */
  snapshot?: boolean;
  /**
   * After a reconnect, ask the server to replay the changes missed since the last one seen
   * (`options.resume_from`). Default true. A server that cannot is told to nobody: the
   * subscription gets a `reset` change instead.
   */
  resume?: boolean;
}

// -- changes delivered to subscribers ------------------------------------------------------

/** A row that was created, updated or deleted, as it concerns one subscription's filter. */
export interface RowChange<T> {
  /**
   * What to do to a list kept in sync: `create` adds the row (created, or updated into the
   * filter), `update` replaces it, `delete` removes it (deleted, or updated out of the filter:
   * then `row` holds the old values).
   */
  operation: "create" | "update" | "delete";
  row: T;
  /** For updates: whether the row entered, stayed in or left the filter. */
  change?: "enter" | "stay" | "leave";
  /** The database operation behind it. */
  sourceOperation?: "create" | "update" | "delete";
  /** The change's position in the entity's stream, when the server numbers changes. */
  position?: Position;
  /** The notification's whole `metadata` (e.g. `txid`, `batch_index` of multi-row writes). */
  metadata?: Record<string, unknown>;
  schema: string;
  entity: string;
  timestamp: string;
}

/**
 * Changes may have been missed: read again. Sent after a reconnect that could not resume,
 * when the server says `reset`, and first of all for a subscription with `snapshot`.
 * With `snapshot`, `rows` holds the matching rows to replace the list with.
 */
export interface ResetChange<T> {
  operation: "reset";
  reason: "subscribed" | "reconnected" | "server";
  /** The server's explanation, for `server` resets. */
  message?: string;
  /** The matching rows, for subscriptions with `snapshot`. */
  rows?: T[];
}

/** The server ended the subscription (e.g. the new identity may not see it); no more changes. */
export interface RevokedChange {
  operation: "revoked";
  /** An error code: `unauthorized`, `token_expired`, … */
  reason: string;
  message: string;
}

/** What a subscription's callback receives. */
export type Change<T> = RowChange<T> | ResetChange<T> | RevokedChange;

// -- the wire ------------------------------------------------------------------------------

/** A message's `type`. */
export type MessageType =
  | "request"
  | "subscription"
  | "ping"
  | "response"
  | "notification"
  | "pong";

/** An error as the server reports it. */
export interface ErrorInfo {
  code: string;
  message: string;
  details?: Record<string, JSONValue>;
}

/** A message from the client. */
export interface OutgoingMessage {
  id: string;
  type: "request" | "subscription" | "ping";
  operation?: string;
  schema?: string;
  entity?: string;
  record_id?: RecordId;
  data?: unknown;
  options?: Record<string, unknown>;
  subscription_id?: string;
  metadata?: Record<string, unknown>;
}

/** An answer from the server (`type: "response"` or `"pong"`). */
export interface ResponseMessage {
  id: string | number | null;
  type: "response" | "pong";
  success?: boolean;
  data?: unknown;
  error?: ErrorInfo;
  metadata?: Record<string, unknown>;
  timestamp?: string;
}

/** A push from the server; `subscription_id` is `null` for connection-level events. */
export interface NotificationMessage {
  type: "notification";
  operation: string;
  subscription_id: string | null;
  schema?: string;
  entity?: string;
  data?: unknown;
  metadata?: Record<string, unknown>;
  timestamp?: string;
}

/** The description of an entity (`meta`). */
export interface EntityMeta {
  schema: string;
  entity: string;
  primary_key: string[];
  columns: {
    name: string;
    type:
      | "integer"
      | "float"
      | "decimal"
      | "string"
      | "text"
      | "boolean"
      | "date"
      | "datetime"
      | "time"
      | "uuid"
      | "json"
      | "bytes";
    nullable: boolean;
    primary_key: boolean;
    default: JSONValue;
  }[];
  relations: {
    name: string;
    kind: "one" | "many";
    schema?: string;
    entity: string;
    local_columns: string[];
    remote_columns: string[];
  }[];
}
