// storage.js — where the write queue is kept (IndexedDB, or memory), and how the tabs of one browser share it
// (Web Locks and BroadcastChannel).
//
// A storage has `get(key)`, `set(key, value)`, `delete(key)` and `list(prefix)` (every `[key, value]` whose key starts
// with the prefix, in key order), all async, and `kind` ("indexeddb" or "memory").

/** Key-value storage in memory, with the same async interface as the IndexedDB one. */
export function createMemoryStorage() {
  const map = new Map();
  return {
    kind: "memory",
    async get(key) {
      return map.has(key) ? structuredClone(map.get(key)) : undefined;
    },
    async set(key, value) {
      map.set(key, structuredClone(value));
    },
    async delete(key) {
      map.delete(key);
    },
    /** Every `[key, value]` whose key starts with `prefix`, in key order. */
    async list(prefix) {
      return [...map.keys()]
        .filter((key) => key.startsWith(prefix))
        .sort()
        .map((key) => [key, structuredClone(map.get(key))]);
    },
  };
}

/**
 * Key-value storage in IndexedDB (one object store, `kv`), so that the offline queue survives a reload. Where
 * IndexedDB is missing or refuses to open (some private modes), it falls back to memory.
 */
export function createIndexedDBStorage({ name = "realtime-client", indexedDB = globalThis.indexedDB } = {}) {
  const memory = createMemoryStorage();
  if (!indexedDB) return memory;
  const opened = new Promise((resolve) => {
    try {
      const request = indexedDB.open(name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore("kv");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => resolve(null);
      request.onblocked = () => resolve(null);
    } catch {
      resolve(null);
    }
  });
  const run = async (mode, action) => {
    const db = await opened;
    if (!db) return undefined;
    return new Promise((resolve, reject) => {
      const transaction = db.transaction("kv", mode);
      const request = action(transaction.objectStore("kv"));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  };
  return {
    kind: "indexeddb",
    async get(key) {
      return (await opened) ? run("readonly", (store) => store.get(key)) : memory.get(key);
    },
    async set(key, value) {
      return (await opened) ? run("readwrite", (store) => store.put(value, key)) : memory.set(key, value);
    },
    async delete(key) {
      return (await opened) ? run("readwrite", (store) => store.delete(key)) : memory.delete(key);
    },
    async list(prefix) {
      const db = await opened;
      if (!db) return memory.list(prefix);
      return new Promise((resolve, reject) => {
        const transaction = db.transaction("kv", "readonly");
        const found = [];
        const cursor = transaction.objectStore("kv").openCursor(IDBKeyRange.bound(prefix, `${prefix}\uffff`));
        cursor.onsuccess = () => {
          if (!cursor.result) return;
          found.push([cursor.result.key, cursor.result.value]);
          cursor.result.continue();
        };
        transaction.oncomplete = () => resolve(found);
        transaction.onerror = () => reject(transaction.error);
        transaction.onabort = () => reject(transaction.error);
      });
    },
    /** Resolves once IndexedDB has opened (true) or turned out to be unavailable (false). */
    get available() {
      return opened.then((db) => db !== null);
    },
  };
}

// ---------------------------------------------------------------------------------------------- tabs

/**
 * How the tabs of one browser share the write queue: `lock(name, fn)` runs `fn` while no other tab holds `name`
 * (Web Locks), and `channel(name)` is a BroadcastChannel-like port (`postMessage`, `onmessage`, `close`). In one tab
 * alone (no Web Locks, or storage that no other tab sees) the lock is a local mutex and there is no channel.
 */
export function browserTabs() {
  const locks = globalThis.navigator?.locks;
  const Channel = globalThis.BroadcastChannel;
  if (!locks?.request || !Channel) return localTabs();
  return {
    lock: (name, fn) => locks.request(name, () => fn()),
    channel: (name) => new Channel(name),
  };
}

/** Coordination for a single tab: a local mutex per name, no messages. */
export function localTabs() {
  const held = new Map();
  return {
    async lock(name, fn) {
      while (held.has(name)) await held.get(name).catch(() => {});
      const running = Promise.resolve().then(fn);
      held.set(name, running);
      try {
        return await running;
      } finally {
        held.delete(name);
      }
    },
    channel: () => null,
  };
}

