// delays.js — what this device saw of the service level: the delay from each live change's commit to its arrival
// (on the server's clock as estimated), reported every period to `POST /realtime/v1/slo/client-delay`.

export const DEFAULT_REPORT_DELAY_EVERY_MS = 30_000;
/** What POST /realtime/v1/slo/client-delay takes: at most 100 samples, each at most an hour. */
const MAX_DELAY_SAMPLES = 100;
const MAX_DELAY_SAMPLE_MS = 3_600_000;

/**
 * The delay reports of one client. `everyMs` is the period (0 turns reports off); `streamOpenedAt()` when the
 * current stream opened (null while there is none), `serverNow()` the server's clock as estimated, and
 * `request(method, path, body)` the REST call.
 */
export class DelayReporter {
  constructor({ clock, random = Math.random, everyMs = DEFAULT_REPORT_DELAY_EVERY_MS, streamOpenedAt, serverNow, request }) {
    Object.assign(this, { clock, random, everyMs, streamOpenedAt, serverNow, request });
    /** Delays (ms) of live changes not reported yet, and the timer of the next report. */
    this.samples = [];
    this.timer = null;
    this.closed = false;
  }

  /**
   * Notes the delay of a change committed at `commitTimestamp`. Changes committed before the stream opened (less a
   * second of clock skew) are its catch-up after a (re)connect, old by design: they are not counted, as the server
   * does not count them either. Beyond 100 samples per report, random ones are replaced.
   */
  note(commitTimestamp) {
    const openedAt = this.streamOpenedAt();
    if (!this.everyMs || openedAt === null || this.closed) return;
    const committed = Date.parse(commitTimestamp ?? "");
    if (!Number.isFinite(committed) || committed < openedAt - 1000) return;
    const delay = Math.min(MAX_DELAY_SAMPLE_MS, Math.max(0, this.serverNow() - committed));
    if (this.samples.length < MAX_DELAY_SAMPLES) {
      this.samples.push(delay);
    } else {
      this.samples[Math.floor(this.random() * MAX_DELAY_SAMPLES)] = delay;
    }
    if (this.timer === null) {
      this.timer = this.clock.setTimeout(() => this.report(), this.everyMs);
    }
  }

  /** Sends the delays noted since the last report; a failed report is dropped (the next one carries new samples). */
  async report() {
    this.timer = null;
    const samples = this.samples.splice(0);
    if (samples.length === 0 || this.closed) return;
    try {
      await this.request("POST", "/realtime/v1/slo/client-delay", { samples_ms: samples });
    } catch {
      // offline: these samples are lost, which only thins the window
    }
  }

  /** Stops reporting (what was not sent is dropped). */
  close() {
    this.closed = true;
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
  }
}
