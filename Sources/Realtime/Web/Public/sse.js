// sse.js — Server-Sent-Events parsing (the WHATWG rules), fed text in chunks of any size.

/**
 * An incremental Server-Sent-Events parser (the WHATWG rules): feed it text as it arrives, in chunks of any size,
 * and it returns the frames it completed, each `{ event, data, id, retry }` (`id` is set only when the frame had an
 * `id:` line; `retry` only on a frame that had a `retry:` line). Comment lines (`: keepalive`) are skipped.
 */
export class SSEParser {
  constructor() {
    this.buffer = "";
    this.skipLineFeed = false;
    this.lastEventId = "";
    this.retry = null;
    this.resetFrame();
  }

  /** Clears the frame being built. */
  resetFrame() {
    this.data = [];
    this.event = "";
    this.frameId = undefined;
    this.frameRetry = undefined;
  }

  /** Feeds `text`; returns the frames it completed. */
  push(text) {
    const frames = [];
    let input = text;
    if (this.skipLineFeed && input.startsWith("\n")) input = input.slice(1);
    this.skipLineFeed = false;
    const source = this.buffer + input;
    let start = 0;
    for (let i = 0; i < source.length; i++) {
      const char = source[i];
      if (char !== "\n" && char !== "\r") continue;
      const line = source.slice(start, i);
      if (char === "\r") {
        if (i + 1 < source.length) {
          if (source[i + 1] === "\n") i++;
        } else {
          this.skipLineFeed = true;
        }
      }
      start = i + 1;
      this.line(line, frames);
    }
    this.buffer = source.slice(start);
    return frames;
  }

  /** Handles one complete line. */
  line(line, frames) {
    if (line === "") {
      if (this.data.length > 0) {
        const frame = { event: this.event || "message", data: this.data.join("\n"), id: this.frameId };
        if (this.frameRetry !== undefined) frame.retry = this.frameRetry;
        frames.push(frame);
      }
      this.resetFrame();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data":
        this.data.push(value);
        break;
      case "event":
        this.event = value;
        break;
      case "id":
        if (!value.includes("\0")) {
          this.lastEventId = value;
          this.frameId = value;
        }
        break;
      case "retry":
        if (/^\d+$/.test(value)) {
          this.retry = Number(value);
          this.frameRetry = this.retry;
        }
        break;
      default:
        break;
    }
  }
}

/** Parses a whole SSE text at once; convenient in tests. */
export function parseSSE(text) {
  return new SSEParser().push(text);
}
