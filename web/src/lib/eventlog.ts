// A run's event log as the run page reads it: the last window first (what the log shows,
// following the end), then the live stream from there; earlier pages only when they are
// looked at (scrolled to) or when everything is needed (search, level filter, time travel).
// Seqs are dense (1, 2, 3, ...), so event `seq` lives at index seq - 1 and the pages of
// GET /v1/runs/{id}/events?after=N can be asked for by position, several at once.
import { useLayoutEffect, useRef, useState } from "preact/hooks";
import { call, type RunEvent } from "../api/client";
import { followEvents } from "./sse";

export const PAGE = 1000;

export interface EventLog {
  /** events[seq - 1]; a hole is a page not loaded yet */
  events: (RunEvent | undefined)[];
  /** the highest seq known */
  total: number;
  /** changes whenever events arrive (the array itself is filled in place) */
  version: number;
  /** the first window is in */
  loaded: boolean;
  /** every event from 1 to total is loaded */
  complete: boolean;
  live: boolean;
  error: unknown;
  /** load the pages holding seqs from..to (1-based, inclusive) */
  want(from: number, to: number): void;
  /** load every page (search, filters, time travel) */
  wantAll(): void;
}

/** lastSeq: the run's last_event_seq when the page opened (undefined until the run is read). */
export function useEventLog(id: string, lastSeq: number | undefined, onChange: () => void, onEnd: () => void): EventLog {
  const [version, setVersion] = useState(0);
  const [loaded, setLoaded] = useState(false);
  const [live, setLive] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const store = useRef<{ id: string; events: (RunEvent | undefined)[]; pending: Set<number>; stop: boolean }>({
    id,
    events: [],
    pending: new Set(),
    stop: false,
  });
  const bump = () => setVersion((v) => v + 1);

  function put(batch: RunEvent[]) {
    const ev = store.current.events;
    for (const e of batch) ev[e.seq - 1] = e;
  }

  /** page p holds seqs p*PAGE+1 .. (p+1)*PAGE */
  async function loadPage(p: number) {
    const s = store.current;
    if (s.pending.has(p)) return;
    s.pending.add(p);
    try {
      const page = await call("get", "/v1/runs/{id}/events", { path: { id: s.id }, query: { after: p * PAGE, limit: PAGE } });
      if (s.stop || s !== store.current) return;
      put(page.data);
      bump();
    } catch (e) {
      if (!s.stop) setError(e);
    } finally {
      s.pending.delete(p);
    }
  }

  function missing(from: number, to: number): number[] {
    const ev = store.current.events;
    const pages: number[] = [];
    for (let p = Math.floor((Math.max(1, from) - 1) / PAGE); p * PAGE < to; p++) {
      const lo = p * PAGE, hi = Math.min(to, (p + 1) * PAGE);
      for (let i = lo; i < hi; i++)
        if (!ev[i]) {
          pages.push(p);
          break;
        }
    }
    return pages;
  }

  // a layout effect: the first window is asked for before the browser lays the page out
  useLayoutEffect(() => {
    const s = { id, events: [] as (RunEvent | undefined)[], pending: new Set<number>(), stop: false };
    store.current = s;
    setLoaded(false);
    setError(null);
    if (lastSeq === undefined) return;
    let follow: { close(): void } | null = null;
    (async () => {
      try {
        // the last window: the page holding the last seq and the one before, at once (the
        // log shows the end, and the pages are the ones scrolling asks for); then whatever
        // the run appended since it was read, until the stream takes over
        const last = Math.max(0, Math.floor((lastSeq - 1) / PAGE));
        const pages = await Promise.all(
          [last - 1, last].filter((p) => p >= 0).map((p) => call("get", "/v1/runs/{id}/events", { path: { id }, query: { after: p * PAGE, limit: PAGE } })),
        );
        if (s.stop) return;
        pages.forEach((page) => put(page.data));
        let after = s.events.length;
        for (let full = pages[pages.length - 1].data.length === PAGE; full; ) {
          const page = await call("get", "/v1/runs/{id}/events", { path: { id }, query: { after, limit: PAGE } });
          if (s.stop) return;
          put(page.data);
          after = s.events.length;
          full = page.data.length === PAGE;
        }
        s.events.length = Math.max(s.events.length, after);
        setLoaded(true);
        bump();
        // events the run appended after it was read (a node began to wait, an agent's last
        // call ended) came with these pages, not the stream: the run is read again for them
        if (after > lastSeq) onChange();
        follow = followEvents(
          id,
          after,
          (batch) => {
            put(batch);
            bump();
            onChange();
          },
          () => {
            setLive(false);
            onEnd();
          },
          setLive,
        );
        if (s.stop) follow.close();
      } catch (e) {
        if (!s.stop) setError(e);
      }
    })();
    return () => {
      s.stop = true;
      follow?.close();
    };
  }, [id, lastSeq === undefined]);

  const events = store.current.events;
  const total = events.length;
  let complete = loaded;
  if (complete) for (let i = 0; i < total && complete; i++) complete = events[i] !== undefined;
  return {
    events,
    total,
    version,
    loaded,
    complete,
    live,
    error,
    want(from, to) {
      if (!loaded) return;
      for (const p of missing(from, Math.min(to, total))) loadPage(p);
    },
    wantAll() {
      if (!loaded) return;
      const pages = missing(1, total);
      // four at a time: the API's pool is shared with everyone else's requests
      (async () => {
        for (let i = 0; i < pages.length; i += 4) await Promise.all(pages.slice(i, i + 4).map(loadPage));
      })();
    },
  };
}
