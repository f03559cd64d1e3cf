// platform.js — what the client takes from the browser when it is not given its own (tests give theirs): the clock,
// the online/offline signal, the page-hide signal and random UUIDs.

/** A random (version 4) UUID; `crypto.randomUUID` needs a secure context, so there is a fallback. */
export function randomUUID(random = Math.random) {
  if (random === Math.random && globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (random === Math.random && globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(random() * 256);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The real clock. Tests pass one with the same three methods. */
export const systemClock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle),
});

/** The browser's online/offline signal (`navigator.onLine` and its events); always online elsewhere. */
export function browserNetwork() {
  const target = globalThis.window ?? null;
  return {
    isOnline: () => globalThis.navigator?.onLine ?? true,
    subscribe(callback) {
      if (!target?.addEventListener) return () => {};
      const online = () => callback(true);
      const offline = () => callback(false);
      target.addEventListener("online", online);
      target.addEventListener("offline", offline);
      return () => {
        target.removeEventListener("online", online);
        target.removeEventListener("offline", offline);
      };
    },
  };
}

/** Calls back when the page is being hidden for good (`pagehide`); nothing outside a browser. */
export function browserPageLifecycle() {
  const target = globalThis.window ?? null;
  return {
    onHide(callback) {
      if (!target?.addEventListener) return () => {};
      target.addEventListener("pagehide", callback);
      return () => target.removeEventListener("pagehide", callback);
    },
  };
}
