// The run viewer: status and actions, the DAG with each node's state, the waterfall
// timeline (a map's items aggregated, expandable), the live event log (follow, search,
// level), input / output / error, cost, and time travel: a slider over the event log that
// shows every node as it was right after the chosen event.
import type { ComponentChildren } from "preact";
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import { ApiError, call, uuid, type Approval, type NodeState, type Run, type RunEvent } from "../api/client";
import { navigate } from "../lib/router";
import { useEventLog, type EventLog as Log } from "../lib/eventlog";
import { groupNodes, groupStatus, layout, stateAt, type DefNode, type Group } from "../lib/runstate";
import { absolute, duration, span } from "../lib/time";
import { VirtualList } from "../lib/virtual";
import { ErrorBox, Json, Link, Loading, Status, Time, useTick } from "../ui";
import { AgentView } from "../viewer/AgentView";
import { Artifacts } from "../viewer/Artifacts";

const FINAL = new Set(["completed", "failed", "canceled"]);
const LEVELS = ["debug", "info", "warn", "error"];

/** The rest of a run's nodes that are not map items, after the first 1,000 the run read
 * brought (a run with more than that: nodes_truncated). */
async function moreNodes(id: string, first: NodeState[]): Promise<NodeState[]> {
  const all: NodeState[] = [];
  let cursor: string | undefined;
  do {
    const page = await call("get", "/v1/runs/{id}/nodes", { path: { id }, query: { items: false, limit: 1000, cursor } });
    all.push(...page.data);
    cursor = page.next_cursor ?? undefined;
  } while (cursor);
  return all.length ? all : first;
}

export function RunPage({ id }: { id: string }) {
  const [run, setRun] = useState<Run | undefined>(undefined);
  const [nodes, setNodes] = useState<NodeState[]>([]);
  const [defs, setDefs] = useState<DefNode[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [selected, setSelected] = useState<string | null>(null);
  const [travel, setTravel] = useState<number | null>(null);
  const [approvals, setApprovals] = useState<Approval[]>([]);
  const refresh = useRef<ReturnType<typeof setTimeout> | null>(null);
  const finalRef = useRef(false);
  // reads of the run in flight, and whether the run ended (its stream said so) meanwhile
  const reading = useRef(0);
  const endedWhileReading = useRef(false);
  // Once the page is gone (another page, sign-out) no reload may start: a timer left behind
  // would read the run without a session.
  const gone = useRef(false);
  useEffect(
    () => () => {
      gone.current = true;
      if (refresh.current) clearTimeout(refresh.current);
      refresh.current = null;
    },
    [],
  );
  useTick(1000);

  // The page opens from two small reads made at once: the run with its nodes that are not
  // map items (its maps aggregated, GET /v1/runs/{id}?items=false) and the last window of
  // its events (useEventLog). The rest comes after the first paint: the workflow's graph,
  // more nodes (a run with more than 1,000 that are not map items), a map's items when its
  // timeline row is opened, earlier events as they scroll into view.
  async function loadRun() {
    try {
      reading.current++;
      const r = await call("get", "/v1/runs/{id}", { path: { id }, query: { items: false } }).finally(() => reading.current--);
      if (gone.current) return;
      setRun(r);
      setNodes(r.nodes);
      finalRef.current = FINAL.has(r.status);
      setError(null);
      // a read that began before the run's end may have missed it: once more
      if (endedWhileReading.current && !reading.current) {
        endedWhileReading.current = false;
        if (!finalRef.current) soon();
      }
      if (r.nodes_truncated) moreNodes(id, r.nodes).then((ns) => !gone.current && setNodes(ns), setError);
      if (r.status === "needs_input" || r.status === "waiting") {
        const a = await call("get", "/v1/approvals", { query: { status: "pending", limit: 200 } });
        setApprovals(a.data.filter((x) => x.run_id === id));
      } else setApprovals([]);
    } catch (e) {
      setError(e);
    }
  }
  // events arrive in bursts: one reload of the run per 400 ms at most
  function soon() {
    if (refresh.current || gone.current) return;
    refresh.current = setTimeout(() => {
      refresh.current = null;
      if (!gone.current) loadRun();
    }, 400);
  }
  // the run's end: one more read unless the run was already seen finished (or a read is
  // on its way, which looks again if it did not see the end)
  function ended() {
    if (finalRef.current) return;
    if (reading.current) endedWhileReading.current = true;
    else soon();
  }
  const log = useEventLog(id, soon, ended);
  // the first window of events went past the run as it was read (a node began to wait, an
  // agent's last call ended meanwhile): those events came with the window, not the stream,
  // so the run is read again for them
  const behind = !!run && run.id === id && log.loaded && log.total > run.last_event_seq;
  useEffect(() => {
    if (behind) soon();
  }, [behind]);

  // a layout effect, like the events' first window: both reads leave before the first paint
  useLayoutEffect(() => {
    setRun(undefined);
    finalRef.current = false;
    endedWhileReading.current = false;
    setTravel(null);
    setSelected(null);
    loadRun();
  }, [id]);
  useEffect(() => {
    if (!run) return;
    call("get", "/v1/workflows/{name}", { path: { name: run.workflow }, query: { version: run.workflow_version } }).then(
      (w) => setDefs(((w.definition as { nodes?: DefNode[] }).nodes ?? []) as DefNode[]),
      () => setDefs([]),
    );
  }, [run?.workflow, run?.workflow_version]);

  // time travel replays the whole log: it is loaded when the slider is first moved
  useEffect(() => {
    if (travel !== null) log.wantAll();
  }, [travel !== null, log.loaded]);
  const past = useMemo(
    () => (travel === null || !log.complete ? null : stateAt(log.events as RunEvent[], travel)),
    [travel, log.complete, log.total],
  );
  // the agent view reads an agent run's whole story from the log: a run with agents loads it all
  const hasAgents = !!run?.agents?.length;
  useEffect(() => {
    if (hasAgents) log.wantAll();
  }, [hasAgents, log.loaded]);
  const agentEvents = useMemo(() => (hasAgents ? (log.events.filter(Boolean) as RunEvent[]) : []), [hasAgents, log.version]);
  const shownNodes = past ? past.nodes : nodes;
  const maps = past ? undefined : run?.maps;
  const groups = useMemo(() => groupNodes(shownNodes, defs.map((d) => d.id), maps), [shownNodes, defs, maps]);

  if (error && !run) return <ErrorBox error={error} />;
  if (!run)
    return (
      <section class="run">
        <Loading what="the run" />
      </section>
    );

  async function act(f: () => Promise<unknown>) {
    setActionError(null);
    try {
      await f();
      await loadRun();
    } catch (e) {
      setActionError(e);
    }
  }
  async function rerun(from?: string) {
    setActionError(null);
    try {
      const r = await call("post", "/v1/runs/{id}/rerun", { path: { id }, body: from ? { from_node: from } : {} });
      navigate(`/runs/${r.id}`);
    } catch (e) {
      setActionError(e);
    }
  }
  const final = FINAL.has(run.status);
  const waitingFor = defs.filter((d) => d.type === "wait_event" && shownNodes.some((n) => n.node_id === d.id && n.status === "waiting"));
  const sel = selected ? groups.find((g) => g.id === selected) : undefined;
  const lastSeq = log.total;

  return (
    <section class="run">
      <div class="run-head">
        <h1>
          {run.workflow} <span class="muted">v{run.workflow_version}</span> <Status status={past ? past.status : run.status} />
        </h1>
        <div class="mono muted" title="run id">
          {run.id}
        </div>
        <dl class="facts">
          <dt>Created</dt>
          <dd>
            <Time iso={run.created_at} />
          </dd>
          <dt>Duration</dt>
          <dd>{span(run.started_at, run.finished_at)}</dd>
          <dt>Attempt</dt>
          <dd>{run.attempt}</dd>
          <dt>Cost</dt>
          <dd data-testid="cost">
            ${run.cost_usd.toFixed(4)} <span class="muted">({run.tokens_in} in / {run.tokens_out} out tokens)</span>
          </dd>
          {run.rerun_of && (
            <>
              <dt>Rerun of</dt>
              <dd>
                <Link href={`/runs/${run.rerun_of}`} class="mono">
                  {run.rerun_of.slice(0, 8)}
                </Link>
                {run.rerun_from_node && <> from {run.rerun_from_node}</>}
              </dd>
            </>
          )}
          {run.wait_reason && (
            <>
              <dt>Waiting</dt>
              <dd>{run.wait_reason}</dd>
            </>
          )}
        </dl>
        <div class="actions" role="group" aria-label="run actions">
          <button disabled={final || run.cancel_requested} onClick={() => act(() => call("post", "/v1/runs/{id}/cancel", { path: { id } }))}>
            Cancel
          </button>
          <button disabled={final || run.status === "paused" || run.pause_requested} onClick={() => act(() => call("post", "/v1/runs/{id}/pause", { path: { id } }))}>
            Pause
          </button>
          <button disabled={run.status !== "paused" && !run.pause_requested} onClick={() => act(() => call("post", "/v1/runs/{id}/resume", { path: { id } }))}>
            Resume
          </button>
          <button onClick={() => rerun()}>Rerun</button>
        </div>
        <ErrorBox error={actionError} />
      </div>

      {!final && <SignalForm runId={id} suggestions={waitingFor.map((d) => d.event ?? "")} onSent={loadRun} />}
      {run.status === "needs_input" && <ResolveForm run={run} onDone={loadRun} />}
      {approvals.map((a) => (
        <ApprovalCard approval={a} onDone={loadRun} />
      ))}

      <TimeTravel log={log} value={travel} onChange={setTravel} lastSeq={lastSeq} at={past?.at ?? null} />

      <div class="panes">
        <div class="pane">
          <h2>Graph</h2>
          <Dag defs={defs} groups={groups} selected={selected} onSelect={setSelected} />
          {sel && (
            <NodeDetail group={sel} final={final} onRerun={() => rerun(sel.id)} onClose={() => setSelected(null)} />
          )}
        </div>
        <div class="pane">
          <h2>Timeline</h2>
          <Timeline runId={id} groups={groups} runStart={Date.parse(run.started_at ?? run.created_at)} runEnd={past?.at ? Date.parse(past.at) : run.finished_at ? Date.parse(run.finished_at) : Date.now()} onSelect={setSelected} />
        </div>
      </div>

      <AgentView run={run} events={agentEvents} />

      <EventLog log={log} live={log.live && !final} travel={travel} onTravel={setTravel} />

      <div class="panes">
        <div class="pane">
          <h2>Input</h2>
          <Json value={run.input} label="run input" />
        </div>
        <div class="pane">
          <h2>{run.error ? "Error" : "Output"}</h2>
          {run.error ? <Json value={run.error} label="run error" /> : final ? <Json value={run.output} label="run output" /> : <p class="muted">Not finished yet.</p>}
        </div>
      </div>
      <Artifacts runId={id} version={run.updated_at} />
    </section>
  );
}

// The slider runs over seqs (dense: position i is event i + 1), so it needs no event loaded
// until it is moved; the state it shows needs them all (loading until then).
function TimeTravel({ log, value, onChange, lastSeq, at }: { log: Log; value: number | null; onChange: (v: number | null) => void; lastSeq: number; at: string | null }) {
  if (!lastSeq) return null;
  const idx = value === null ? lastSeq - 1 : Math.min(lastSeq, Math.max(1, value)) - 1;
  return (
    <div class={`travel ${value !== null ? "on" : ""}`}>
      <label for="travel">Time travel</label>
      <input
        id="travel"
        type="range"
        min={0}
        max={lastSeq - 1}
        value={idx}
        aria-valuetext={`event ${idx + 1}`}
        onInput={(e) => {
          const i = Number((e.target as HTMLInputElement).value);
          onChange(i >= lastSeq - 1 ? null : i + 1);
        }}
      />
      <span class="travel-at" data-testid="travel-at">
        {value === null ? `live (event ${lastSeq})` : log.complete ? `as of event ${value} — ${absolute(at)}` : `as of event ${value} — loading the events…`}
      </span>
      {value !== null && (
        <button class="link" onClick={() => onChange(null)}>
          Back to live
        </button>
      )}
    </div>
  );
}

function Dag({ defs, groups, selected, onSelect }: { defs: DefNode[]; groups: Group[]; selected: string | null; onSelect: (id: string) => void }) {
  const { pos, width, height } = useMemo(() => layout(defs), [defs]);
  if (!defs.length) return <p class="muted">No graph.</p>;
  const byId = new Map(groups.map((g) => [g.id, g]));
  return (
    <div class="dag-wrap">
      <svg class="dag" width={width} height={height} role="img" aria-label="workflow graph">
        {defs.flatMap((d) =>
          (d.after ?? []).map((a) => {
            const p = pos.get(a), q = pos.get(d.id);
            if (!p || !q) return null;
            return <path class="edge" d={`M${p.x + 140},${p.y + 20} C${p.x + 155},${p.y + 20} ${q.x - 15},${q.y + 20} ${q.x},${q.y + 20}`} />;
          }),
        )}
        {defs.map((d) => {
          const p = pos.get(d.id)!;
          const g = byId.get(d.id);
          const st = g ? groupStatus(g) : "pending";
          const n = g?.total ?? 0;
          return (
            <g
              class={`node s-${st} ${selected === d.id ? "sel" : ""}`}
              transform={`translate(${p.x},${p.y})`}
              tabindex={0} // lower-case: an SVG attribute (preact sets SVG attributes as written)
              role="button"
              aria-label={`node ${d.id}: ${st}`}
              data-node={d.id}
              data-status={st}
              onClick={() => onSelect(d.id)}
              onKeyDown={(e) => (e.key === "Enter" || e.key === " ") && onSelect(d.id)}
            >
              <rect width={140} height={40} rx={6} />
              <text x={8} y={16}>
                {d.id.length > 18 ? d.id.slice(0, 17) + "…" : d.id}
              </text>
              <text x={8} y={32} class="sub">
                {d.type ?? ""} · {n ? `${g!.counts.completed ?? 0}/${n}` : st}
              </text>
            </g>
          );
        })}
      </svg>
    </div>
  );
}

function NodeDetail({ group, final, onRerun, onClose }: { group: Group; final: boolean; onRerun: () => void; onClose: () => void }) {
  const n = group.node;
  return (
    <div class="node-detail" role="region" aria-label={`node ${group.id}`}>
      <h3>
        {group.id} {n && <Status status={n.status} />}{" "}
        <button class="link" onClick={onClose} aria-label="close node details">
          ×
        </button>
      </h3>
      {n && (
        <p>
          attempt {n.attempt} · started <Time iso={n.started_at} /> · {span(n.started_at, n.finished_at)}
        </p>
      )}
      {group.total > 0 && (
        <p>
          {group.total} items:{" "}
          {Object.entries(group.counts)
            .map(([s, c]) => `${c} ${s}`)
            .join(", ")}
        </p>
      )}
      <button onClick={onRerun} disabled={!final} title={final ? "a new run reusing the results of the nodes before this one" : "the run must finish first"}>
        Rerun from {group.id}
      </button>
      {n?.error != null && <Json value={n.error} label="node error" />}
      {n?.output != null && <Json value={n.output} label="node output" />}
      {n?.output_omitted && <p class="muted">Its output is its {group.total} items' outputs, in order: open its row in the timeline.</p>}
    </div>
  );
}

function Timeline({ runId, groups, runStart, runEnd, onSelect }: { runId: string; groups: Group[]; runStart: number; runEnd: number; onSelect: (id: string) => void }) {
  const [open, setOpen] = useState<string | null>(null);
  if (!groups.length) return <p class="muted">Nothing has started yet.</p>;
  const total = Math.max(1, runEnd - runStart);
  const bar = (start: number, end: number | null, st: string, label: string) => {
    const l = Math.max(0, ((start - runStart) / total) * 100);
    const w = Math.max(0.5, (((end ?? runEnd) - start) / total) * 100);
    return (
      <div class="track">
        <div class={`bar s-${st}`} style={{ left: `${l}%`, width: `${Math.min(w, 100 - l)}%` }} title={label} />
      </div>
    );
  };
  return (
    <div class="timeline" role="table" aria-label="timeline">
      {groups.map((g) => {
        const st = groupStatus(g);
        const d = duration((g.end ?? runEnd) - g.start);
        const n = g.node;
        return (
          <>
            <div class="trow" role="row" data-group={g.id}>
              <button class="tname link" role="cell" onClick={() => (g.total ? setOpen(open === g.id ? null : g.id) : onSelect(g.id))} aria-expanded={g.total ? open === g.id : undefined}>
                {g.total ? (open === g.id ? "▾ " : "▸ ") : ""}
                {g.id}
                {n && n.attempt > 1 && <span class="retry"> attempt {n.attempt}</span>}
                {g.total > 0 && <span class="muted"> ×{g.total}</span>}
              </button>
              {bar(g.start, g.end, st, `${g.id}: ${st}, ${d}`)}
              <span class="tdur" role="cell">
                {st === "waiting" ? "waiting" : d}
              </span>
            </div>
            {open === g.id && <MapItems runId={runId} group={g} bar={bar} />}
          </>
        );
      })}
    </div>
  );
}

/** A map's items, in index order: those at hand, else (an aggregated map) read page by page
 * from GET /v1/runs/{id}/nodes?map=ID, each row known by its id until its page is in. */
function MapItems({ runId, group, bar }: { runId: string; group: Group; bar: (start: number, end: number | null, st: string, label: string) => ComponentChildren }) {
  const [fetched, setFetched] = useState<(NodeState | undefined)[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const aggregated = group.items.length < group.total;
  useEffect(() => {
    if (!aggregated) return;
    let stop = false;
    const items: (NodeState | undefined)[] = new Array(group.total);
    (async () => {
      try {
        let cursor: string | undefined;
        do {
          const page = await call("get", "/v1/runs/{id}/nodes", { path: { id: runId }, query: { map: group.id, limit: 1000, cursor } });
          if (stop) return;
          for (const n of page.data) {
            const i = Number(n.node_id.slice(group.id.length + 1, -1));
            if (i >= 0) items[i] = n;
          }
          setFetched([...items]);
          cursor = page.next_cursor ?? undefined;
        } while (cursor);
      } catch (e) {
        if (!stop) setError(e);
      }
    })();
    return () => {
      stop = true;
    };
  }, [runId, group.id, aggregated]);
  const items: (NodeState | undefined)[] = aggregated ? (fetched ?? new Array(group.total)) : group.items;
  return (
    <>
      <ErrorBox error={error} />
      <VirtualList
        label={`items of ${group.id}`}
        items={items}
        rowHeight={22}
        height={Math.min(300, items.length * 22)}
        row={(it, i) =>
          it ? (
            <div class="trow item">
              <span class="tname mono">
                {it.node_id}
                {it.attempt > 1 && <span class="retry"> attempt {it.attempt}</span>}
              </span>
              {bar(Date.parse(it.started_at), it.finished_at ? Date.parse(it.finished_at) : null, it.status, `${it.node_id}: ${it.status}`)}
              <span class="tdur">{span(it.started_at, it.finished_at)}</span>
            </div>
          ) : (
            <div class="trow item muted" aria-busy="true">
              <span class="tname mono">{`${group.id}[${i}]`}</span>
            </div>
          )
        }
      />
    </>
  );
}

// The log: without a filter every seq is a row, loaded a page at a time as it comes into view;
// a search or level filter needs the whole log, read once and kept.
function EventLog({ log, live, travel, onTravel }: { log: Log; live: boolean; travel: number | null; onTravel: (seq: number) => void }) {
  const [follow, setFollow] = useState(true);
  const [search, setSearch] = useState("");
  const [level, setLevel] = useState("");
  const filtered = !!search || !!level;
  useEffect(() => {
    if (filtered) log.wantAll();
  }, [filtered, log.loaded]);
  const shown = useMemo(() => {
    if (!filtered) return log.events;
    if (!log.complete) return [];
    const q = search.toLowerCase();
    const min = level ? LEVELS.indexOf(level) : 0;
    return (log.events as RunEvent[]).filter(
      (e) => LEVELS.indexOf(e.level) >= min && (!q || e.kind.includes(q) || (e.node_id ?? "").toLowerCase().includes(q) || (e.message ?? "").toLowerCase().includes(q)),
    );
  }, [log.events, log.total, log.complete, search, level]);
  return (
    <div class="events">
      <div class="events-head">
        <h2>
          Events <span class="muted">({log.total})</span> {live && <span class="live" aria-label="live">● live</span>}
        </h2>
        <label>
          <input type="checkbox" checked={follow} onChange={(e) => setFollow((e.target as HTMLInputElement).checked)} /> Follow
        </label>
        <input type="search" aria-label="search events" placeholder="search kind, node, message" value={search} onInput={(e) => setSearch((e.target as HTMLInputElement).value)} />
        <select aria-label="minimum level" value={level} onChange={(e) => setLevel((e.target as HTMLSelectElement).value)}>
          <option value="">all levels</option>
          {LEVELS.slice(1).map((l) => (
            <option value={l}>{l} and above</option>
          ))}
        </select>
      </div>
      <ErrorBox error={log.error} />
      {!log.loaded || (filtered && !log.complete) ? (
        <Loading what={filtered ? "every event" : "events"} />
      ) : (
        <VirtualList
          label="event log"
          items={shown}
          rowHeight={24}
          height={360}
          follow={follow}
          onScrollAway={() => setFollow(false)}
          onRange={(first, last) => !filtered && log.want(first + 1, last)}
          row={(e, i) =>
            e ? (
              <div class={`ev l-${e.level} ${travel !== null && e.seq > travel ? "future" : ""}`} data-seq={e.seq}>
                <button class="link seq" title="time travel to this event" onClick={() => onTravel(e.seq)}>
                  {e.seq}
                </button>
                <time dateTime={e.created_at} title={absolute(e.created_at)}>
                  {e.created_at.slice(11, 23)}
                </time>
                <span class="kind">{e.kind}</span>
                <span class="evnode">{e.node_id ?? ""}</span>
                <span class="msg">{e.message ?? ""}</span>
              </div>
            ) : (
              <div class="ev muted" aria-busy="true">
                <span class="seq">{i + 1}</span>
              </div>
            )
          }
        />
      )}
    </div>
  );
}

function SignalForm({ runId, suggestions, onSent }: { runId: string; suggestions: string[]; onSent: () => void }) {
  const [name, setName] = useState("");
  const [payload, setPayload] = useState("{}");
  const [error, setError] = useState<unknown>(null);
  const [sent, setSent] = useState("");
  const wanted = suggestions.filter(Boolean);
  async function send(e: Event) {
    e.preventDefault();
    setError(null);
    let body: Record<string, unknown>;
    try {
      body = payload.trim() ? JSON.parse(payload) : {};
    } catch (err) {
      setError(new ApiError(400, "invalid_json", "the payload is not valid JSON", String(err)));
      return;
    }
    try {
      await call("post", "/v1/runs/{id}/signals/{name}", { path: { id: runId, name: name || wanted[0] }, body: body as never });
      setSent(name || wanted[0]);
      onSent();
    } catch (err) {
      setError(err);
    }
  }
  return (
    <form class="signal" onSubmit={send} aria-label="send a signal">
      <strong>Signal</strong>
      {wanted.length > 0 && <span class="hint">waiting for {wanted.map((w) => `“${w}”`).join(", ")}</span>}
      <input aria-label="signal name" placeholder={wanted[0] || "name"} value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
      <input aria-label="signal payload (JSON)" class="mono" value={payload} onInput={(e) => setPayload((e.target as HTMLInputElement).value)} />
      <button type="submit" disabled={!name && !wanted.length}>
        Send signal
      </button>
      {sent && <span class="ok">sent “{sent}”</span>}
      <ErrorBox error={error} />
    </form>
  );
}

export function ResolveForm({ run, onDone }: { run: { id: string; wait_reason: string | null }; onDone: () => void }) {
  const [comment, setComment] = useState("");
  const [error, setError] = useState<unknown>(null);
  async function resolve(action: "retry" | "skip" | "stop") {
    try {
      await call("post", "/v1/runs/{id}/resolve", { path: { id: run.id }, body: { action, comment: comment || undefined } });
      onDone();
    } catch (e) {
      setError(e);
    }
  }
  return (
    <div class="ask" role="region" aria-label="the run needs input">
      <strong>Needs input</strong> {run.wait_reason && <span>{run.wait_reason}</span>}
      <input aria-label="comment" placeholder="comment (optional)" value={comment} onInput={(e) => setComment((e.target as HTMLInputElement).value)} />
      <button onClick={() => resolve("retry")}>Retry node</button>
      <button onClick={() => resolve("skip")}>Skip node</button>
      <button class="danger" onClick={() => resolve("stop")}>
        Stop run
      </button>
      <ErrorBox error={error} />
    </div>
  );
}

/** The arguments an agent proposed for a gated tool call, when the approval may be approved
 * with edited ones (a tool call's, decided by one approval); otherwise undefined. */
function editableArguments(approval: Approval): Record<string, unknown> | undefined {
  const request = approval.request as { kind?: string; context?: { arguments?: unknown } } | null;
  const args = request?.context?.arguments;
  if (request?.kind !== "tool_call" || approval.quorum > 1 || !args || typeof args !== "object" || Array.isArray(args)) return undefined;
  return args as Record<string, unknown>;
}

export function ApprovalCard({ approval, onDone }: { approval: Approval; onDone: () => void }) {
  const proposed = editableArguments(approval);
  const proposedText = proposed ? JSON.stringify(proposed, null, 2) : "";
  const [comment, setComment] = useState("");
  const [argsText, setArgsText] = useState(proposedText);
  const [error, setError] = useState<unknown>(null);
  const edited = proposed !== undefined && argsText.trim() !== proposedText.trim();
  async function decide(decision: "approve" | "reject") {
    let args: Record<string, unknown> | undefined;
    if (decision === "approve" && edited) {
      try {
        args = JSON.parse(argsText) as Record<string, unknown>;
      } catch (e) {
        setError(`the arguments are not valid JSON: ${(e as Error).message}`);
        return;
      }
      if (!args || typeof args !== "object" || Array.isArray(args)) {
        setError("the arguments must be a JSON object");
        return;
      }
    }
    try {
      await call("post", "/v1/approvals/{id}/decide", { path: { id: approval.id }, body: { decision, comment: comment || undefined, arguments: args }, query: undefined as never });
      onDone();
    } catch (e) {
      setError(e);
    }
  }
  return (
    <div class="ask" role="region" aria-label={`approval ${approval.title}`}>
      <strong>Approval</strong> {approval.title} <span class="muted">node {approval.node_id}</span> <Time iso={approval.created_at} />
      <Json value={approval.request} label="what is asked" />
      {proposed && (
        <label class="edit-args">
          Arguments the tool runs with (edit to correct them)
          <textarea aria-label="tool call arguments (JSON)" class="mono" rows={Math.min(12, proposedText.split("\n").length + 1)} value={argsText} onInput={(e) => setArgsText((e.target as HTMLTextAreaElement).value)} />
        </label>
      )}
      <input aria-label="comment" placeholder="comment (optional)" value={comment} onInput={(e) => setComment((e.target as HTMLInputElement).value)} />
      <button onClick={() => decide("approve")}>{edited ? "Approve with these arguments" : "Approve"}</button>
      <button class="danger" onClick={() => decide("reject")}>
        Reject
      </button>
      <ErrorBox error={error} />
    </div>
  );
}

export { uuid };
