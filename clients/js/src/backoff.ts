/** Reconnect delays: exponential backoff with jitter. */

/** How the client reconnects after losing its connection. */
export interface ReconnectOptions {
  /** The first delay, in milliseconds. Default 500. */
  initialDelay?: number;
  /** The longest delay, in milliseconds. Default 30 000. */
  maxDelay?: number;
  /** Each delay is the previous one times this. Default 2. */
  factor?: number;
  /**
   * The share of each delay that is random, from 0 to 1. Default 0.5: a delay `d` becomes a
   * uniform pick in `[d/2, d]`, so that clients dropped together do not return together.
   */
  jitter?: number;
  /**
   * Give up (the client closes; waiting requests and `connect()` reject) after this many
   * connection attempts in a row have failed. Default: never.
   */
  maxAttempts?: number;
}

/** The reconnect policy with every default filled in. */
export type Backoff = Required<ReconnectOptions>;

export function backoffPolicy(options: ReconnectOptions = {}): Backoff {
  const policy: Backoff = {
    initialDelay: options.initialDelay ?? 500,
    maxDelay: options.maxDelay ?? 30_000,
    factor: options.factor ?? 2,
    jitter: options.jitter ?? 0.5,
    maxAttempts: options.maxAttempts ?? Number.POSITIVE_INFINITY,
  };
  if (!(policy.initialDelay >= 0) || !(policy.maxDelay >= policy.initialDelay)) {
    throw new RangeError(
      `expected 0 <= initialDelay <= maxDelay, got ${policy.initialDelay} and ${policy.maxDelay}`,
    );
  }
  if (!(policy.factor >= 1)) {
    throw new RangeError(`expected factor >= 1, got ${policy.factor}`);
  }
  if (!(policy.jitter >= 0 && policy.jitter <= 1)) {
    throw new RangeError(`expected 0 <= jitter <= 1, got ${policy.jitter}`);
  }
  if (!(policy.maxAttempts >= 1)) {
    throw new RangeError(`expected maxAttempts >= 1, got ${policy.maxAttempts}`);
  }
  return policy;
}

/**
 * The delay after `attempt` failures in a row (1 also for the first try after a loss).
 *
 * @param random - a number in [0, 1), `Math.random()` by default.
 */
export function backoffDelay(policy: Backoff, attempt: number, random = Math.random()): number {
  const exponent = Math.max(0, attempt - 1);
  const base = Math.min(policy.maxDelay, policy.initialDelay * policy.factor ** exponent);
  return base * (1 - policy.jitter * random);
}
