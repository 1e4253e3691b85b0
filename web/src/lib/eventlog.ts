// A run's event log as the run page reads it: the last window first (what the log shows,
// following the end: GET /v1/runs/{id}/events?last=N, asked for at once, beside the run's
// own read), then the live stream from there; earlier pages only when they are looked at
// (scrolled to) or when everything is needed (search, level filter, time travel).
// Seqs are dense (1, 2, 3, ...), so event `seq` lives at index seq - 1 and the pages of
// GET /v1/runs/{id}/events?after=N can be asked for by position, several at once.
import { useLayoutEffect, useRef, useState } from "preact/hooks";
import { call, type RunEvent } from "../api/client";
import { followEvents } from "./sse";

export const PAGE = 1000;
/** the first window: a screenful and more, small enough to come at once */
export const FIRST = 200;

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

/** onChange: events arrived (the run is read again); onEnd: the run ended. */
export function useEventLog(id: string, onChange: () => void, onEnd: () => void): EventLog {
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
      // only the wanted part of the page counts (the first window is the log's last FIRST
      // events, most of a page that is not asked for yet)
      const lo = Math.max(p * PAGE, from - 1), hi = Math.min(to, (p + 1) * PAGE);
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
    let follow: { close(): void } | null = null;
    (async () => {
      try {
        // the last window (the log shows the end), then the stream from its last seq
        const page = await call("get", "/v1/runs/{id}/events", { path: { id }, query: { last: FIRST } });
        if (s.stop) return;
        put(page.data);
        const after = page.next_after;
        s.events.length = Math.max(s.events.length, after);
        setLoaded(true);
        bump();
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
  }, [id]);

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
