// Small shared pieces: times, status badges, errors, JSON, loading and empty states, lists.
import type { ComponentChildren } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import { ApiError } from "./api/client";
import { linkHandler } from "./lib/router";
import { absolute, relative } from "./lib/time";

/** Re-renders every `ms` so relative times stay true. */
export function useTick(ms = 5000): number {
  const [n, setN] = useState(0);
  useEffect(() => {
    const t = setInterval(() => setN((x) => x + 1), ms);
    return () => clearInterval(t);
  }, [ms]);
  return n;
}

export function Time({ iso }: { iso: string | null | undefined }) {
  if (!iso) return <span class="muted">—</span>;
  return (
    <time dateTime={iso} title={absolute(iso)}>
      {relative(iso)}
    </time>
  );
}

export function Status({ status }: { status: string }) {
  return <span class={`badge s-${status}`}>{status.replace("_", " ")}</span>;
}

export function Link({ href, children, class: cls }: { href: string; children: ComponentChildren; class?: string }) {
  return (
    <a href={href} onClick={linkHandler} class={cls}>
      {children}
    </a>
  );
}

export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  const text = error instanceof ApiError ? error.describe() : String(error);
  return (
    <div class="error" role="alert">
      {text}
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <div class="loading" role="status" aria-live="polite">
      Loading {what}…
    </div>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="empty">{children}</div>;
}

/** A list as a table: "Loading <what>…" until its rows come (undefined), `empty` when there
 * are none, else the table (labelled `label`, scrolling sideways on a narrow screen) with
 * the header cells `head` and `row(item)` — a <tr> — for each item. */
export function ListTable<T>({ rows, what, empty, label, head, row }: { rows: T[] | undefined; what: string; empty: ComponentChildren; label?: string; head: ComponentChildren; row: (item: T) => ComponentChildren }) {
  if (!rows) return <Loading what={what} />;
  if (rows.length === 0) return <>{empty}</>;
  return (
    <div class="table-wrap">
      <table aria-label={label}>
        <thead>
          <tr>{head}</tr>
        </thead>
        <tbody>{rows.map(row)}</tbody>
      </table>
    </div>
  );
}

/** A JSON value, pretty-printed. A large one shows its start until asked for more: laying
 * out a 10,000-item input or output (100 KB of text) took the browser 0.5–1.2 s on a
 * loaded machine, longer than everything else a run page does to open. */
export function Json({ value, label }: { value: unknown; label?: string }) {
  const [more, setMore] = useState(false);
  // once per value, not per render (a run page renders every second)
  const text = useMemo(() => (value === undefined ? "" : (JSON.stringify(value, null, 2) ?? "null")), [value]);
  if (value === undefined) return null;
  const cap = more ? 100_000 : 4_000;
  const rest = text.length - cap;
  return (
    <>
      <pre class="json" aria-label={label}>
        {rest > 0 ? `${text.slice(0, cap)}\n… ${Math.ceil(rest / 1024)} KB more` : text}
      </pre>
      {rest > 0 && !more && (
        <button class="link" onClick={() => setMore(true)}>
          Show more of {label ?? "it"}
        </button>
      )}
      {rest > 0 && more && <p class="muted">The rest: agently run show ID -o json</p>}
    </>
  );
}

/** Loads with f() on mount and whenever deps change; re-loads with reload(). */
export function useLoad<T>(f: () => Promise<T>, deps: unknown[]): { data: T | undefined; error: unknown; reload: () => void; loading: boolean } {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    setLoading(true);
    f().then(
      (d) => {
        if (!live) return;
        setData(d);
        setError(null);
        setLoading(false);
      },
      (e) => {
        if (!live) return;
        setError(e);
        setLoading(false);
      },
    );
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, n]);
  return { data, error, loading, reload: () => setN((x) => x + 1) };
}
