// What the run viewer derives from a run: node states grouped (a map's items under the map),
// the state of every node as it was at any past event (time travel), and the DAG's layout.
import type { NodeState, RunEvent, RunStatus, Schemas } from "../api/client";

export type MapSummary = Schemas["MapSummary"];

export interface DefNode {
  id: string;
  type?: string;
  after?: string[];
  event?: string;
}

export interface Group {
  id: string; // the node id (a map's own id for its items)
  node?: NodeState; // the node's own latest attempt
  items: NodeState[]; // map items (id[i]) at hand, in index order
  total: number; // the map's items (more than items.length when they come aggregated)
  counts: Record<string, number>;
  start: number; // ms
  end: number | null; // ms, null while open
}

const ITEM = /^(.*)\[(\d+)\]$/;

/** Groups node states: a map's items `fanout[12]` go under `fanout`. A large run's maps come
 * aggregated (GET /v1/runs/{id} `maps`, with `nodes` then holding no items): each is its
 * group's counts, size and span, its items loaded when it is opened. */
export function groupNodes(nodes: NodeState[], order: string[], maps: MapSummary[] = []): Group[] {
  const groups = new Map<string, Group>();
  const get = (id: string) => {
    let g = groups.get(id);
    if (!g) {
      g = { id, items: [], total: 0, counts: {}, start: Infinity, end: 0 };
      groups.set(id, g);
    }
    return g;
  };
  for (const m of maps) {
    const g = get(m.node_id);
    g.total = m.items;
    g.counts = { ...m.counts };
    g.start = Math.min(g.start, Date.parse(m.started_at));
    g.end = m.finished_at ? Math.max(g.end ?? 0, Date.parse(m.finished_at)) : null;
  }
  for (const n of nodes) {
    const m = ITEM.exec(n.node_id);
    const g = get(m ? m[1] : n.node_id);
    if (m) {
      g.items.push(n);
      g.total++;
      g.counts[n.status] = (g.counts[n.status] ?? 0) + 1;
    } else g.node = n;
    const s = Date.parse(n.started_at);
    if (s < g.start) g.start = s;
    if (g.end !== null) g.end = n.finished_at ? Math.max(g.end, Date.parse(n.finished_at)) : null;
  }
  for (const g of groups.values()) {
    g.items.sort((a, b) => itemIndex(a.node_id) - itemIndex(b.node_id));
    if (g.node && !g.node.finished_at) g.end = null;
  }
  const rank = new Map(order.map((id, i) => [id, i]));
  return [...groups.values()].sort((a, b) => (rank.get(a.id) ?? 1e9) - (rank.get(b.id) ?? 1e9) || a.start - b.start);
}

function itemIndex(id: string): number {
  const m = ITEM.exec(id);
  return m ? Number(m[2]) : 0;
}

/** The status a group shows: its own node's, else its items' worst. */
export function groupStatus(g: Group): string {
  if (g.node) return g.node.status;
  for (const s of ["failed", "started", "waiting", "interrupted", "canceled", "completed", "skipped"]) if (g.counts[s]) return s;
  return "pending";
}

const RUN_KIND: Record<string, RunStatus> = {
  "run.created": "queued",
  "run.queued": "queued",
  "run.started": "running",
  "run.recovered": "running",
  "run.resumed": "running",
  "run.paused": "paused",
  "run.escalated": "needs_input",
  "run.completed": "completed",
  "run.failed": "failed",
  "run.canceled": "canceled",
};

/** Every node's state and the run's status as they were right after event `upto` (seq). */
export function stateAt(events: RunEvent[], upto: number): { nodes: NodeState[]; status: RunStatus; at: string | null } {
  const nodes = new Map<string, NodeState>();
  let status: RunStatus = "queued";
  let at: string | null = null;
  for (const e of events) {
    if (e.seq > upto) break;
    at = e.created_at;
    const rs = RUN_KIND[e.kind];
    if (rs) status = rs;
    if (e.kind === "node.waiting" && status === "running") status = "waiting";
    if (!e.node_id || !e.kind.startsWith("node.")) continue;
    const st = e.kind.slice(5);
    const old = nodes.get(e.node_id);
    const data = (e.data ?? {}) as Record<string, unknown>;
    const ns: NodeState = {
      node_id: e.node_id,
      status: (st === "retry_scheduled" ? "failed" : st) as NodeState["status"],
      attempt: e.attempt ?? old?.attempt ?? 1,
      output: "output" in data ? data.output : (old?.output ?? null),
      error: "error" in data ? data.error : st === "failed" ? data : (old?.error ?? null),
      started_at: old && old.attempt === (e.attempt ?? old.attempt) ? old.started_at : e.created_at,
      finished_at: ["completed", "failed", "skipped", "canceled", "interrupted", "retry_scheduled"].includes(st) ? e.created_at : null,
    };
    if (ns.status === "started" || ns.status === "waiting") ns.finished_at = null;
    nodes.set(e.node_id, ns);
  }
  return { nodes: [...nodes.values()], status, at };
}

/** Layers (longest path from a root) and positions of the DAG's nodes. */
export function layout(defs: DefNode[]): { pos: Map<string, { x: number; y: number }>; width: number; height: number } {
  const byId = new Map(defs.map((d) => [d.id, d]));
  const layer = new Map<string, number>();
  const visit = (id: string, depth: number): number => {
    if (layer.has(id)) return layer.get(id)!;
    if (depth > defs.length) return 0; // a cycle the API would have refused
    const d = byId.get(id);
    const l = d?.after?.length ? Math.max(...d.after.map((a) => visit(a, depth + 1) + 1)) : 0;
    layer.set(id, l);
    return l;
  };
  defs.forEach((d) => visit(d.id, 0));
  const rows: string[][] = [];
  for (const d of defs) (rows[layer.get(d.id)!] ??= []).push(d.id);
  const pos = new Map<string, { x: number; y: number }>();
  const W = 170, H = 56;
  rows.forEach((ids, l) => ids.forEach((id, i) => pos.set(id, { x: 10 + l * W, y: 10 + i * H })));
  return { pos, width: 10 + rows.length * W, height: 10 + Math.max(1, ...rows.map((r) => r.length)) * H };
}
