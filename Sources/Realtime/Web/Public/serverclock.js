// serverclock.js — the estimate of the server's clock: from the `Date` header of every answer (each narrows the
// bounds) and the commit timestamps of changes (a floor), so that writes are stamped in the server's time however
// far off this device's clock is, and never earlier than this client's previous stamp.

import { timeKey } from "./filters.js";

/** How long a lower bound of the server's clock taken from a commit timestamp is trusted. */
const COMMIT_FLOOR_TTL_MS = 10 * 60_000;

/** The server's clock as this client can tell it, on top of the device's `clock` ({now}). */
export class ServerClock {
  constructor(clock) {
    this.clock = clock;
    /** The server's clock minus this device's: from `Date` headers, and at least what commit timestamps imply. */
    this.dateOffset = null;
    this.dateBounds = null;
    this.commitFloor = null;
    this.lastServerNow = Number.NEGATIVE_INFINITY;
    this.lastStamp = Number.NEGATIVE_INFINITY;
  }

  /**
   * Now, on the server's clock as far as this client can tell (ms since the epoch). It never goes backwards, however
   * the estimate moves: a later write is never stamped earlier than an earlier one of this client.
   */
  serverNow() {
    const now = Math.max(this.clock.now() + this.clockOffset(), this.lastServerNow);
    this.lastServerNow = now;
    return now;
  }

  /** A time to stamp a write with: serverNow(), and always later than the stamp before (two writes, two times). */
  stampNow() {
    const now = Math.max(this.serverNow(), this.lastStamp + 1);
    this.lastStamp = now;
    return now;
  }

  /** The estimated server clock minus this device's clock, in ms. */
  clockOffset() {
    let offset = this.dateOffset ?? 0;
    if (this.commitFloor && this.clock.now() - this.commitFloor.at < COMMIT_FLOOR_TTL_MS) {
      offset = Math.max(offset, this.commitFloor.offset);
    }
    return offset;
  }

  /**
   * Takes the `Date` header of an answer: the server's clock, to the second, read somewhere between the request's
   * start and the answer's arrival, so the offset lies in [date − arrival, date + 1 s − start]. The bounds of recent
   * answers are intersected (each narrows the estimate), and the estimate is the middle; answers that contradict
   * the others (a clock that jumped) start over.
   */
  noteServerDate(response, sentAt) {
    const header = response?.headers?.get?.("Date");
    const date = header ? Date.parse(header) : Number.NaN;
    if (!Number.isFinite(date)) return;
    const receivedAt = this.clock.now();
    const low = date - receivedAt;
    const high = date + 1000 - sentAt;
    const bounds = this.dateBounds;
    if (bounds && receivedAt - bounds.at < COMMIT_FLOOR_TTL_MS && Math.max(low, bounds.low) <= Math.min(high, bounds.high)) {
      this.dateBounds = { low: Math.max(low, bounds.low), high: Math.min(high, bounds.high), at: receivedAt };
    } else {
      this.dateBounds = { low, high, at: receivedAt };
    }
    this.dateOffset = (this.dateBounds.low + this.dateBounds.high) / 2;
  }

  /** A change committed at `commitTimestamp` proves the server's clock had reached that time when it arrived. */
  noteCommitTime(commitTimestamp) {
    const committed = timeKey(commitTimestamp) / 1000;
    if (!Number.isFinite(committed)) return;
    const now = this.clock.now();
    const offset = committed - now;
    const current = this.commitFloor;
    if (!current || offset > current.offset || now - current.at >= COMMIT_FLOOR_TTL_MS) this.commitFloor = { offset, at: now };
  }
}
