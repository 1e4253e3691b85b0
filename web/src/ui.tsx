// Small shared pieces: times, status badges, errors, JSON, loading and empty states.
import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
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

export function Json({ value, label }: { value: unknown; label?: string }) {
  if (value === undefined) return null;
  const text = JSON.stringify(value, null, 2) ?? "null";
  const cap = 100_000; // a 10,000-item output would cost seconds to lay out
  return (
    <pre class="json" aria-label={label}>
      {text.length > cap ? `${text.slice(0, cap)}\n… ${Math.round((text.length - cap) / 1024)} KB more (agently run show ID -o json)` : text}
    </pre>
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
