// The inbox: every pending approval and every run that waits for a person (needs_input),
// with its context; decide or answer with a comment. Refreshed every few seconds.
import { useEffect, useState } from "preact/hooks";
import { call, type Approval, type RunSummary } from "../api/client";
import { Empty, ErrorBox, Link, Loading, Time } from "../ui";
import { ApprovalCard, ResolveForm } from "./Run";

export function InboxPage() {
  const [approvals, setApprovals] = useState<Approval[] | undefined>(undefined);
  const [asks, setAsks] = useState<(RunSummary & { wait_reason: string | null })[]>([]);
  const [error, setError] = useState<unknown>(null);
  async function load() {
    try {
      const [a, r] = await Promise.all([
        call("get", "/v1/approvals", { query: { status: "pending", limit: 200 } }),
        call("get", "/v1/runs", { query: { status: "needs_input", limit: 200 } }),
      ]);
      const full = await Promise.all(r.data.map((x) => call("get", "/v1/runs/{id}", { path: { id: x.id } })));
      setApprovals(a.data);
      setAsks(full.map((f, i) => ({ ...r.data[i], wait_reason: f.wait_reason })));
      setError(null);
    } catch (e) {
      setError(e);
    }
  }
  useEffect(() => {
    load();
    const t = setInterval(load, 4000);
    return () => clearInterval(t);
  }, []);
  return (
    <section>
      <h1>Inbox</h1>
      <ErrorBox error={error} />
      {approvals === undefined ? (
        <Loading what="the inbox" />
      ) : approvals.length === 0 && asks.length === 0 ? (
        <Empty>Nothing waits for you.</Empty>
      ) : (
        <>
          {approvals.map((a) => (
            <div class="inbox-item" key={a.id}>
              <Link href={`/runs/${a.run_id}`}>run {a.run_id.slice(0, 8)}</Link>
              <ApprovalCard approval={a} onDone={load} />
            </div>
          ))}
          {asks.map((r) => (
            <div class="inbox-item" key={r.id}>
              <Link href={`/runs/${r.id}`}>
                {r.workflow} run {r.id.slice(0, 8)}
              </Link>{" "}
              waiting since <Time iso={r.created_at} />
              <ResolveForm run={r} onDone={load} />
            </div>
          ))}
        </>
      )}
    </section>
  );
}
