// Runs: filter by status, workflow and time; newest first, pages by the API's cursors; the
// first page refreshes every few seconds (live); select several to cancel them at once.
import { useEffect, useState } from "preact/hooks";
import { call, type RunStatus, type RunSummary } from "../api/client";
import { navigate, useLocation } from "../lib/router";
import { span } from "../lib/time";
import { Empty, ErrorBox, Link, Loading, Status, Time, useTick } from "../ui";

const STATUSES: RunStatus[] = ["queued", "running", "waiting", "needs_input", "paused", "completed", "failed", "canceled"];
const SINCE: [string, string][] = [
  ["", "any time"],
  ["1h", "last hour"],
  ["24h", "last 24 hours"],
  ["7d", "last 7 days"],
];
const SINCE_MS: Record<string, number> = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
const FINAL = new Set(["completed", "failed", "canceled"]);

export function RunsPage() {
  const { query } = useLocation();
  const status = query.get("status") ?? "";
  const workflow = query.get("workflow") ?? "";
  const since = query.get("since") ?? "";
  const [runs, setRuns] = useState<RunSummary[] | undefined>(undefined);
  const [next, setNext] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [busy, setBusy] = useState(false);
  const [wf, setWf] = useState(workflow);
  useTick(5000);

  function setFilter(k: string, v: string) {
    const q = new URLSearchParams(location.search);
    if (v) q.set(k, v);
    else q.delete(k);
    navigate(`/runs${[...q].length ? "?" + q : ""}`, true);
  }

  function filterQuery(cursor?: string) {
    return {
      status: (status || undefined) as RunStatus | undefined,
      workflow: workflow || undefined,
      created_after: since ? new Date(Date.now() - SINCE_MS[since]).toISOString() : undefined,
      limit: 50,
      cursor,
    };
  }

  // the first page, now and every 3 s; pages loaded with "More" stay as they are
  useEffect(() => {
    let live = true;
    setRuns(undefined);
    setSelected(new Set());
    async function load(first: boolean) {
      try {
        const page = await call("get", "/v1/runs", { query: filterQuery() });
        if (!live) return;
        setRuns((old) => {
          if (first || !old) return page.data;
          const fresh = new Map(page.data.map((r) => [r.id, r]));
          const rest = old.filter((r) => !fresh.has(r.id) && old.indexOf(r) >= page.data.length);
          return [...page.data, ...rest];
        });
        if (first) setNext(page.next_cursor);
        setError(null);
      } catch (e) {
        if (live) setError(e);
      }
    }
    load(true);
    const t = setInterval(() => load(false), 3000);
    return () => {
      live = false;
      clearInterval(t);
    };
  }, [status, workflow, since]);

  async function more() {
    if (!next) return;
    try {
      const page = await call("get", "/v1/runs", { query: filterQuery(next) });
      setRuns((old) => [...(old ?? []), ...page.data]);
      setNext(page.next_cursor);
    } catch (e) {
      setError(e);
    }
  }

  async function cancelSelected() {
    setBusy(true);
    const ids = [...selected];
    const results = await Promise.allSettled(ids.map((id) => call("post", "/v1/runs/{id}/cancel", { path: { id } })));
    const failed = results.filter((r) => r.status === "rejected") as PromiseRejectedResult[];
    setError(failed.length ? failed[0].reason : null);
    setSelected(new Set());
    setBusy(false);
    const page = await call("get", "/v1/runs", { query: filterQuery() });
    setRuns(page.data);
    setNext(page.next_cursor);
  }

  function toggle(id: string) {
    const s = new Set(selected);
    if (s.has(id)) s.delete(id);
    else s.add(id);
    setSelected(s);
  }

  const cancelable = (runs ?? []).filter((r) => !FINAL.has(r.status));
  return (
    <section>
      <h1>Runs</h1>
      <form class="filters" role="search" onSubmit={(e) => (e.preventDefault(), setFilter("workflow", wf.trim()))}>
        <label>
          Status{" "}
          <select value={status} onChange={(e) => setFilter("status", (e.target as HTMLSelectElement).value)}>
            <option value="">all</option>
            {STATUSES.map((s) => (
              <option value={s}>{s.replace("_", " ")}</option>
            ))}
          </select>
        </label>
        <label>
          Workflow <input value={wf} placeholder="name" onInput={(e) => setWf((e.target as HTMLInputElement).value)} onBlur={() => setFilter("workflow", wf.trim())} />
        </label>
        <label>
          Created{" "}
          <select value={since} onChange={(e) => setFilter("since", (e.target as HTMLSelectElement).value)}>
            {SINCE.map(([v, l]) => (
              <option value={v}>{l}</option>
            ))}
          </select>
        </label>
        <button type="button" disabled={busy || selected.size === 0} onClick={cancelSelected}>
          Cancel selected ({selected.size})
        </button>
      </form>
      <ErrorBox error={error} />
      {runs === undefined ? (
        <Loading what="runs" />
      ) : runs.length === 0 ? (
        <Empty>No runs{status || workflow || since ? " match these filters" : " yet: start one from a workflow's page"}.</Empty>
      ) : (
        <div class="table-wrap">
          <table class="runs">
            <thead>
              <tr>
                <th>
                  <input
                    type="checkbox"
                    aria-label="select every run that can be canceled"
                    checked={cancelable.length > 0 && cancelable.every((r) => selected.has(r.id))}
                    onChange={(e) => setSelected((e.target as HTMLInputElement).checked ? new Set(cancelable.map((r) => r.id)) : new Set())}
                  />
                </th>
                <th>Status</th>
                <th>Workflow</th>
                <th>Run</th>
                <th>Created</th>
                <th>Duration</th>
                <th class="num">Cost</th>
              </tr>
            </thead>
            <tbody>
              {runs.map((r) => (
                <tr key={r.id} data-run={r.id}>
                  <td>
                    <input type="checkbox" aria-label={`select run ${r.id}`} disabled={FINAL.has(r.status)} checked={selected.has(r.id)} onChange={() => toggle(r.id)} />
                  </td>
                  <td>
                    <Status status={r.status} />
                  </td>
                  <td>
                    {r.workflow} <span class="muted">v{r.workflow_version}</span>
                  </td>
                  <td>
                    <Link href={`/runs/${r.id}`} class="mono">
                      {r.id.slice(0, 8)}…{r.id.slice(-4)}
                    </Link>
                  </td>
                  <td>
                    <Time iso={r.created_at} />
                  </td>
                  <td>{span(r.started_at, r.finished_at)}</td>
                  <td class="num">${r.cost_usd.toFixed(4)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {next && (
        <button class="more" onClick={more}>
          More
        </button>
      )}
    </section>
  );
}
