// The run viewer's agent view: for each agent node, its agent runs as a tree (sub-agents
// under the agent that spawned them), each with its reasoning, its LLM calls (the messages
// sent, the response — live as it streams —, tokens, cost, latency) and its tool calls
// (arguments, result, effect class), and the cost totals.
//
// Two sources, both from the API: the agent run's journal (GET
// /v1/runs/{id}/agents/{agent_id}/journal: every effect with its full request and response,
// in order) is the skeleton; the run's events, which name their agent run in
// data.agent_run_id, add what the journal does not hold (latency, effect class, reasoning)
// and the text of the call in flight (agent.text).
import type { ComponentChildren } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { call, type Run, type RunEvent, type Schemas } from "../api/client";
import { duration, span } from "../lib/time";
import { ErrorBox, Json, Status, Time } from "../ui";

type AgentRun = Schemas["AgentRun"];
type Entry = Schemas["AgentJournalEntry"];
type Obj = Record<string, unknown>;

const usd = (n: number | undefined | null) => `$${(n ?? 0).toFixed(4)}`;
const obj = (v: unknown): Obj => (v && typeof v === "object" && !Array.isArray(v) ? (v as Obj) : {});

/** Agent runs grouped by node, each group's roots with their sub-agents under them. */
function trees(agents: AgentRun[]) {
  const kids = new Map<string, AgentRun[]>();
  const byNode = new Map<string, AgentRun[]>();
  const ids = new Set(agents.map((a) => a.id));
  for (const a of agents) {
    if (a.parent_agent_run_id && ids.has(a.parent_agent_run_id)) {
      const k = kids.get(a.parent_agent_run_id) ?? [];
      k.push(a);
      kids.set(a.parent_agent_run_id, k);
    } else {
      const k = byNode.get(a.node_id) ?? [];
      k.push(a);
      byNode.set(a.node_id, k);
    }
  }
  return { kids, byNode };
}

/** Every agent run's events, by agent run id (events name it in data.agent_run_id). */
function eventsByAgent(events: RunEvent[]) {
  const m = new Map<string, RunEvent[]>();
  for (const e of events) {
    if (!e.kind.startsWith("agent.")) continue;
    const id = obj(e.data).agent_run_id;
    if (typeof id !== "string") continue;
    const l = m.get(id) ?? [];
    l.push(e);
    m.set(id, l);
  }
  return m;
}

export function AgentView({ run, events }: { run: Run; events: RunEvent[] }) {
  const agents = run.agents ?? [];
  const { kids, byNode } = useMemo(() => trees(agents), [agents]);
  const evs = useMemo(() => eventsByAgent(events), [events]);
  if (!agents.length) return null;
  return (
    <section class="agents" aria-label="agents">
      <h2>
        Agents <span class="muted">— {usd(run.cost_usd)} in all</span>
      </h2>
      {[...byNode.entries()].map(([node, roots]) => {
        const all = agents.filter((a) => a.node_id === node);
        const cost = all.reduce((s, a) => s + a.cost_usd, 0);
        return (
          <div class="agent-node" data-agent-node={node}>
            <h3>
              node {node}{" "}
              <span class="muted" data-testid={`agent-cost-${node}`}>
                {all.length} agent run{all.length === 1 ? "" : "s"} · {all.reduce((s, a) => s + a.llm_calls, 0)} LLM calls ·{" "}
                {all.reduce((s, a) => s + a.tool_calls, 0)} tool calls · {all.reduce((s, a) => s + a.tokens_in, 0)} in /{" "}
                {all.reduce((s, a) => s + a.tokens_out, 0)} out tokens · {usd(cost)}
              </span>
            </h3>
            <ul class="agent-tree" role="tree" aria-label={`agent runs of ${node}`}>
              {roots.map((a) => (
                <AgentRunItem runId={run.id} agent={a} kids={kids} evs={evs} depth={0} open />
              ))}
            </ul>
          </div>
        );
      })}
    </section>
  );
}

function AgentRunItem({ runId, agent, kids, evs, depth, open: initial = false }: { runId: string; agent: AgentRun; kids: Map<string, AgentRun[]>; evs: Map<string, RunEvent[]>; depth: number; open?: boolean }) {
  const [open, setOpen] = useState(initial);
  const children = kids.get(agent.id) ?? [];
  const label = depth === 0 ? "agent" : "sub-agent";
  return (
    <li role="treeitem" aria-expanded={open} aria-level={depth + 1} class="agent-run" data-agent-run={agent.id} data-depth={depth}>
      <button class="agent-sum link" onClick={() => setOpen(!open)} aria-label={`${label} ${agent.id.slice(0, 8)}: ${agent.status}`}>
        <span aria-hidden="true">{open ? "▾" : "▸"}</span> {label} <span class="mono">{agent.id.slice(0, 8)}</span> <Status status={agent.status} />{" "}
        <span class="muted">
          {agent.model ?? ""} · {agent.llm_calls} LLM · {agent.tool_calls} tools · {agent.tokens_in}/{agent.tokens_out} tokens · {usd(agent.cost_usd)} ·{" "}
          {span(agent.started_at, agent.finished_at)}
        </span>
      </button>
      {open && <AgentRunBody runId={runId} agent={agent} events={evs.get(agent.id) ?? []} />}
      {children.length > 0 && (
        <ul role="group" class="agent-tree">
          {children.map((c) => (
            <AgentRunItem runId={runId} agent={c} kids={kids} evs={evs} depth={depth + 1} open={open} />
          ))}
        </ul>
      )}
    </li>
  );
}

/** The journal of one agent run, every page; as the agent run moves on, only what changed
 * is read again: the entries from the first one still in flight (no response yet) on. */
function useJournal(runId: string, agent: AgentRun, bump: number) {
  const [entries, setEntries] = useState<Entry[] | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const held = useRef<{ id: string; list: Entry[] }>({ id: "", list: [] });
  useEffect(() => {
    let live = true;
    if (held.current.id !== agent.id) held.current = { id: agent.id, list: [] };
    const old = held.current.list;
    const open = old.findIndex((e) => e.response === null);
    const keep = open >= 0 ? old.slice(0, open) : old;
    (async () => {
      try {
        const fresh: Entry[] = [];
        for (let after = keep.length ? keep[keep.length - 1].seq : 0; ; ) {
          const page = await call("get", "/v1/runs/{id}/agents/{agent_id}/journal", { path: { id: runId, agent_id: agent.id }, query: { after, limit: 200 } });
          fresh.push(...page.data);
          after = page.next_after;
          if (!page.more) break;
        }
        if (!live) return;
        held.current = { id: agent.id, list: [...keep, ...fresh] };
        setEntries(held.current.list);
        setError(null);
      } catch (e) {
        if (live) setError(e);
      }
    })();
    return () => {
      live = false;
    };
  }, [runId, agent.id, agent.llm_calls, agent.tool_calls, agent.status, bump]);
  return { entries, error };
}

/** The events of a tool call a person approves first (approve_tools), as the view says them. */
const GATE: Record<string, string> = {
  "agent.tool_approval": "waits for approval",
  "agent.tool_approved": "approved",
  "agent.tool_rejected": "rejected",
  "agent.tool_interrupted": "interrupted",
};

type Step =
  | { t: "reasoning"; e: RunEvent }
  | { t: "llm"; e: Entry; n: number; ev?: RunEvent }
  | { t: "tool"; e: Entry; call?: RunEvent; result?: RunEvent; gate?: RunEvent }
  | { t: "spawn"; e: Entry }
  | { t: "ask"; e: Entry }
  | { t: "refused"; e: RunEvent };

/** The journal in order, with the events that belong to each entry and the reasoning in
 * between (placed before the first entry recorded after it). */
function steps(entries: Entry[], events: RunEvent[]): Step[] {
  const llmEv = events.filter((e) => e.kind === "agent.llm");
  const toolEv = new Map<string, RunEvent>();
  const resEv = new Map<string, RunEvent>();
  const gateEv = new Map<string, RunEvent>();
  for (const e of events) {
    const id = obj(e.data).call_id;
    if (typeof id !== "string") continue;
    if (e.kind === "agent.tool_call") toolEv.set(id, e);
    if (e.kind === "agent.tool_result") resEv.set(id, e);
    if (GATE[e.kind]) gateEv.set(id, e); // the latest step of a gated call's approval
  }
  const loose = events.filter((e) => e.kind === "agent.reasoning" || e.kind === "agent.trace" || e.kind === "agent.tool_refused");
  const out: Step[] = [];
  let li = 0;
  let n = 0;
  for (const j of entries) {
    while (li < loose.length && Date.parse(loose[li].created_at) < Date.parse(j.created_at)) {
      const e = loose[li++];
      out.push(e.kind === "agent.tool_refused" ? { t: "refused", e } : { t: "reasoning", e });
    }
    const req = obj(j.request);
    if (j.kind === "llm") {
      n++;
      out.push({ t: "llm", e: j, n, ev: llmEv.find((e) => obj(e.data).call === n) ?? llmEv[n - 1] });
    } else if (j.kind === "tool") {
      const id = String(req.call_id ?? "");
      out.push({ t: "tool", e: j, call: toolEv.get(id), result: resEv.get(id), gate: gateEv.get(id) });
    } else if (j.kind === "spawn") out.push({ t: "spawn", e: j });
    else out.push({ t: "ask", e: j });
  }
  for (; li < loose.length; li++) out.push(loose[li].kind === "agent.tool_refused" ? { t: "refused", e: loose[li] } : { t: "reasoning", e: loose[li] });
  return out;
}

function AgentRunBody({ runId, agent, events }: { runId: string; agent: AgentRun; events: RunEvent[] }) {
  // a new llm, tool or spawn event means a new journal row: read it again
  const moves = events.filter((e) => e.kind === "agent.llm" || e.kind === "agent.tool_result" || e.kind === "agent.spawn" || e.kind === "agent.spawn_result").length;
  const { entries, error } = useJournal(runId, agent, moves);
  const list = useMemo(() => (entries ? steps(entries, events) : []), [entries, events]);
  // the text of the call in flight: agent.text after the last finished call
  const streaming = useMemo(() => {
    if (agent.status !== "running") return "";
    let i = events.length - 1;
    const parts: string[] = [];
    for (; i >= 0 && events[i].kind !== "agent.llm"; i--) if (events[i].kind === "agent.text") parts.push(String(obj(events[i].data).text ?? ""));
    return parts.reverse().join("");
  }, [events, agent.status]);
  return (
    <div class="agent-body">
      <ErrorBox error={error} />
      {agent.error != null && <Json value={agent.error} label="agent error" />}
      {entries === undefined && !error && <p class="muted">Loading the journal…</p>}
      {entries !== undefined && list.length === 0 && !streaming && <p class="muted">No LLM or tool call yet.</p>}
      <ol class="steps">
        {list.map((s) => (
          <li class={`step step-${s.t}`}>
            <StepView s={s} />
          </li>
        ))}
        {streaming && (
          <li class="step step-llm live" aria-live="polite">
            <strong>LLM call {agent.llm_calls + 1}</strong> <span class="live">● streaming</span>
            <pre class="answer" data-testid="streaming">
              {streaming}
            </pre>
          </li>
        )}
      </ol>
    </div>
  );
}

function Toggle({ label, children }: { label: string; children: ComponentChildren }) {
  return (
    <details>
      <summary>{label}</summary>
      {children}
    </details>
  );
}

function StepView({ s }: { s: Step }) {
  if (s.t === "reasoning")
    return (
      <div class="reasoning">
        <span class="muted">{s.e.kind === "agent.trace" ? "trace" : "reasoning"}</span> {s.e.message}
        {obj(s.e.data).text != null && <span> {String(obj(s.e.data).text)}</span>}
      </div>
    );
  if (s.t === "refused")
    return (
      <div class="refused">
        <span class="danger">refused</span> {s.e.message}
      </div>
    );
  const req = obj(s.e.request);
  const res = s.e.response === null ? null : obj(s.e.response);
  if (s.t === "llm") {
    const r = obj(req.request);
    const usage = obj(res?.usage);
    const ev = obj(s.ev?.data);
    const messages = Array.isArray(r.messages) ? (r.messages as unknown[]) : [];
    const calls = Array.isArray(res?.tool_calls) ? (res!.tool_calls as Obj[]) : [];
    return (
      <div class="llm" data-llm-call={s.n}>
        <strong>LLM call {s.n}</strong>{" "}
        <span class="muted">
          {String(res?.model ?? ev.model ?? r.model ?? "")} · {String(usage.input_tokens ?? ev.input_tokens ?? 0)} in
          {Number(usage.cached_input_tokens ?? 0) > 0 ? ` (${String(usage.cached_input_tokens)} cached)` : ""} / {String(usage.output_tokens ?? ev.output_tokens ?? 0)} out ·{" "}
          <span data-testid="llm-cost">{usd(Number(res?.cost_usd ?? ev.cost_usd ?? 0))}</span>
          {ev.duration_ms != null && <> · {duration(Number(ev.duration_ms))}</>} · {String(res?.stop_reason ?? ev.stop_reason ?? "")}
        </span>{" "}
        <Time iso={s.e.created_at} />
        {r.system != null && (
          <Toggle label="system prompt">
            <pre class="answer">{String(r.system)}</pre>
          </Toggle>
        )}
        <Toggle label={`messages sent (${r.messages_after_seq != null ? `${messages.length} new after the ${String(r.messages_after_count)} before` : messages.length})`}>
          <Messages messages={messages} />
        </Toggle>
        {res === null ? (
          <p class="muted">waiting for the answer…</p>
        ) : (
          <>
            {res.text ? (
              <pre class="answer" aria-label={`answer of LLM call ${s.n}`}>
                {String(res.text)}
              </pre>
            ) : null}
            {calls.map((c) => (
              <div class="asks-tool">
                asks for <code>{String(c.name)}</code> <span class="mono muted">{String(c.arguments ?? "")}</span>
              </div>
            ))}
          </>
        )}
      </div>
    );
  }
  if (s.t === "tool") {
    const c = obj(s.call?.data);
    const rd = obj(s.result?.data);
    const effect = String(req.effect ?? c.effect ?? rd.effect ?? "");
    // a call a reviewer approved with edited arguments: its answer records what ran
    const edit = obj(obj(s.e.response).edited);
    let args: unknown = req.arguments ?? c.arguments;
    if (typeof args === "string")
      try {
        args = JSON.parse(args);
      } catch {
        /* shown as the text it is */
      }
    return (
      <div class="tool" data-tool={String(req.name ?? c.name ?? "")}>
        <strong>tool {String(req.name ?? c.name ?? "?")}</strong> <span class={`badge effect effect-${effect}`}>{effect || "effect unknown"}</span>{" "}
        {rd.is_error === true && <span class="danger">error</span>}{" "}
        {s.gate && (
          <span class={`badge gate gate-${s.gate.kind.slice(11)}`} title={s.gate.message ?? ""}>
            {GATE[s.gate.kind]}
            {obj(s.gate.data).by ? ` by ${String(obj(s.gate.data).by)}` : ""}
            {obj(s.gate.data).edited === true ? " with edited arguments" : ""}
          </span>
        )}{" "}
        <span class="muted">{rd.duration_ms != null ? duration(Number(rd.duration_ms)) : ""}</span> <Time iso={s.e.created_at} />
        <div class="kv">
          <span class="muted">{edit.arguments !== undefined ? "proposed arguments" : "arguments"}</span>
          <Json value={args} label="tool arguments" />
          {edit.arguments !== undefined && (
            <>
              <span class="muted">ran with (edited by {String(edit.by ?? "a reviewer")})</span>
              <Json value={edit.arguments} label="edited arguments" />
            </>
          )}
          <span class="muted">result</span>
          {s.e.response === null ? <p class="muted">{s.gate?.kind === "agent.tool_approval" ? "waiting for a person to approve it…" : "running…"}</p> : <Json value={readable(s.e.response)} label="tool result" />}
        </div>
      </div>
    );
  }
  if (s.t === "spawn")
    return (
      <div class="spawn">
        <strong>spawns a sub-agent</strong> <span class="mono">{String(req.child_agent_run_id ?? "").slice(0, 8)}</span>: {String(req.prompt ?? "")}
        {res === null ? <span class="muted"> — working…</span> : <Json value={res.output} label="sub-agent answer" />}
      </div>
    );
  return (
    <div class="ask-human">
      <strong>asks a person</strong> {String(req.question ?? "")}
      {res !== null && <Json value={res} label="the answer" />}
    </div>
  );
}

/** A tool result whose content is JSON text, with that content parsed (easier to read). */
function readable(v: unknown): unknown {
  const o = obj(v);
  if (typeof o.content !== "string") return v;
  try {
    return { ...o, content: JSON.parse(o.content) };
  } catch {
    return v;
  }
}

function Messages({ messages }: { messages: unknown[] }) {
  return (
    <ol class="messages">
      {messages.map((m) => {
        const o = obj(m);
        if (o.answer_of_seq != null) return <li class="muted">(the answer of the previous call)</li>;
        const content = o.content;
        return (
          <li>
            <span class="role">{String(o.role ?? "?")}</span>{" "}
            {typeof content === "string" ? <span class="pre">{content}</span> : <Json value={content ?? o} />}
            {Array.isArray(o.tool_calls) && <Json value={o.tool_calls} />}
          </li>
        );
      })}
    </ol>
  );
}
