// The inbox: every pending approval and every other request that waits for a person
// (GET /v1/inbox: a node escalated, an agent's question, an agent's exhausted budget), each
// with its context and its answer form; refreshed every few seconds.
import { useEffect, useState } from "preact/hooks";
import { ApiError, call, type Approval, type Schemas } from "../api/client";
import { Empty, ErrorBox, Json, Link, Loading, Time } from "../ui";
import { ApprovalCard, ResolveForm } from "./Run";

type Item = Schemas["InboxItem"];

export function InboxPage() {
  const [approvals, setApprovals] = useState<Approval[] | undefined>(undefined);
  const [asks, setAsks] = useState<Item[]>([]);
  const [error, setError] = useState<unknown>(null);
  async function load() {
    try {
      const [a, i] = await Promise.all([call("get", "/v1/approvals", { query: { status: "pending", limit: 200 } }), call("get", "/v1/inbox", { query: { limit: 200 } })]);
      setApprovals(a.data);
      setAsks(i.data.filter((x) => x.kind !== "approval"));
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
          {asks.map((x) => (
            <div class="inbox-item" key={x.kind + x.id}>
              <Link href={`/runs/${x.run_id}`}>
                {String((x.detail as { workflow?: string }).workflow ?? "")} run {x.run_id.slice(0, 8)}
              </Link>{" "}
              {x.node_id && <span class="muted">node {x.node_id}</span>} waiting since <Time iso={x.created_at} />
              {x.kind === "escalation" ? <ResolveForm run={{ id: x.run_id, wait_reason: x.title }} onDone={load} /> : <AgentInput item={x} onDone={load} />}
            </div>
          ))}
        </>
      )}
    </section>
  );
}

/** An agent's question (an answer) or its exhausted budget (budgets to raise). */
export function AgentInput({ item, onDone }: { item: Item; onDone: () => void }) {
  const budget = item.kind === "budget";
  const [text, setText] = useState(budget ? '{"max_cost_usd": 10}' : "");
  const [error, setError] = useState<unknown>(null);
  const waiting = (item.detail as { waiting_for?: Record<string, unknown> }).waiting_for ?? {};
  async function send(e: Event) {
    e.preventDefault();
    setError(null);
    let body: { answer?: unknown; budget?: Record<string, never> };
    try {
      body = budget ? { budget: JSON.parse(text) } : { answer: text };
    } catch (err) {
      setError(new ApiError(400, "invalid_json", "the budgets are not valid JSON", String(err)));
      return;
    }
    try {
      await call("post", "/v1/runs/{id}/input", { path: { id: item.run_id }, body });
      onDone();
    } catch (err) {
      setError(err);
    }
  }
  return (
    <form class="ask" onSubmit={send} aria-label={budget ? "raise the agent's budget" : "answer the agent's question"}>
      <strong>{budget ? "Budget exhausted" : "The agent asks"}</strong> <span>{typeof waiting.question === "string" ? waiting.question : item.title}</span>
      {budget && <Json value={waiting} label="what ran out" />}
      <input aria-label={budget ? "budgets to raise (JSON)" : "answer"} class={budget ? "mono" : ""} value={text} required onInput={(e) => setText((e.target as HTMLInputElement).value)} />
      <button type="submit">{budget ? "Raise and resume" : "Answer"}</button>
      <ErrorBox error={error} />
    </form>
  );
}
