// Workflows: the list; one workflow's versions with a diff between any two; a JSON editor
// that applies a new version and shows the API's validation errors at their node and field;
// a Run button with an input form.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { ApiError, call, type FieldError, type Workflow } from "../api/client";
import { navigate } from "../lib/router";
import { Empty, ErrorBox, Link, ListTable, Loading, Time, useLoad } from "../ui";

export function WorkflowsPage() {
  const list = useLoad(() => call("get", "/v1/workflows", { query: { limit: 200 } }), []);
  return (
    <section>
      <h1>Workflows</h1>
      <Editor initial={'{\n  "name": "",\n  "nodes": []\n}\n'} onApplied={(w) => navigate(`/workflows/${w.name}`)} />
      <ErrorBox error={list.error} />
      <ListTable
        rows={list.data?.data}
        what="workflows"
        empty={<Empty>No workflows yet: paste a definition above and apply it (or `agently workflow apply FILE`).</Empty>}
        head={
          <>
            <th>Name</th>
            <th>Latest version</th>
            <th>Applied</th>
          </>
        }
        row={(w) => (
          <tr key={w.id}>
            <td>
              <Link href={`/workflows/${encodeURIComponent(w.name)}`}>{w.name}</Link>
            </td>
            <td>v{w.version}</td>
            <td>
              <Time iso={w.created_at} />
            </td>
          </tr>
        )}
      />
    </section>
  );
}

export function WorkflowPage({ name }: { name: string }) {
  const latest = useLoad(() => call("get", "/v1/workflows/{name}", { path: { name } }), [name]);
  const versions = useLoad(() => call("get", "/v1/workflows/{name}/versions", { path: { name } }), [name]);
  const [a, setA] = useState<number | null>(null);
  const [b, setB] = useState<number | null>(null);
  if (latest.error) return <ErrorBox error={latest.error} />;
  if (!latest.data) return <Loading what="the workflow" />;
  const w = latest.data;
  const vs = versions.data?.data ?? [];
  return (
    <section>
      <h1>
        {w.name} <span class="muted">v{w.version}</span>
      </h1>
      <RunForm workflow={w} />
      <h2>Edit</h2>
      <Editor
        key={w.version}
        initial={JSON.stringify(w.definition, null, 2)}
        onApplied={() => {
          latest.reload();
          versions.reload();
        }}
      />
      <h2>Versions</h2>
      {vs.length < 2 ? (
        <p class="muted">Only one version.</p>
      ) : (
        <div class="filters">
          <label>
            Compare{" "}
            <select value={a ?? vs[1]?.version} onChange={(e) => setA(Number((e.target as HTMLSelectElement).value))}>
              {vs.map((v) => (
                <option value={v.version}>v{v.version}</option>
              ))}
            </select>
          </label>
          <label>
            with{" "}
            <select value={b ?? vs[0]?.version} onChange={(e) => setB(Number((e.target as HTMLSelectElement).value))}>
              {vs.map((v) => (
                <option value={v.version}>v{v.version}</option>
              ))}
            </select>
          </label>
        </div>
      )}
      {vs.length >= 2 && <VersionDiff name={name} a={a ?? vs[1].version} b={b ?? vs[0].version} />}
      <ul class="versions">
        {vs.map((v) => (
          <li key={v.id}>
            v{v.version} · <Time iso={v.created_at} /> · <span class="mono muted">{v.definition_sha256.slice(0, 12)}</span>
          </li>
        ))}
      </ul>
    </section>
  );
}

function RunForm({ workflow }: { workflow: Workflow }) {
  const [input, setInput] = useState("{}");
  const [error, setError] = useState<unknown>(null);
  async function start(e: Event) {
    e.preventDefault();
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(input || "{}");
    } catch (err) {
      setError(new ApiError(400, "invalid_json", "the input is not valid JSON", String(err)));
      return;
    }
    try {
      const r = await call("post", "/v1/runs", { body: { workflow: workflow.name, version: workflow.version, input: value as never } });
      navigate(`/runs/${r.id}`);
    } catch (err) {
      setError(err);
    }
  }
  return (
    <form class="runform" onSubmit={start} aria-label="start a run">
      <label for="run-input">Input (JSON)</label>
      <textarea id="run-input" class="mono" rows={4} value={input} onInput={(e) => setInput((e.target as HTMLTextAreaElement).value)} />
      <button type="submit">Run v{workflow.version}</button>
      <ErrorBox error={error} />
    </form>
  );
}

/** Line numbers (1-based) where an error's node is defined, for the editor's gutter. */
function errorLines(text: string, errors: FieldError[]): Map<number, string> {
  const lines = text.split("\n");
  const out = new Map<number, string>();
  for (const e of errors) {
    let at = -1;
    if (e.node) at = lines.findIndex((l) => l.includes(`"id"`) && l.includes(`"${e.node}"`));
    if (at < 0 && e.field) at = lines.findIndex((l) => l.includes(`"${String(e.field).split(/[.[]/)[0]}"`));
    const n = at < 0 ? 1 : at + 1;
    out.set(n, [out.get(n), e.message].filter(Boolean).join("; "));
  }
  return out;
}

function Editor({ initial, onApplied }: { initial: string; onApplied: (w: Workflow) => void }) {
  const [text, setText] = useState(initial);
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [note, setNote] = useState("");
  const area = useRef<HTMLTextAreaElement>(null);
  const gutter = useRef<HTMLDivElement>(null);
  useEffect(() => setText(initial), [initial]);
  const marks = useMemo(() => errorLines(text, errors), [text, errors]);
  const count = text.split("\n").length;

  async function apply() {
    setNote("");
    setErrors([]);
    setError(null);
    let def: Record<string, unknown>;
    try {
      def = JSON.parse(text);
    } catch (e) {
      setError(new ApiError(400, "invalid_json", "the definition is not valid JSON", String(e)));
      return;
    }
    try {
      const w = await call("post", "/v1/workflows", { body: def as never });
      setNote(`applied: ${w.name} v${w.version}`);
      onApplied(w);
    } catch (e) {
      if (e instanceof ApiError && e.code === "validation_failed") setErrors(e.errors.length ? e.errors : [{ message: e.detail ?? e.message }]);
      else setError(e);
    }
  }
  function jump(line: number) {
    const el = area.current;
    if (!el) return;
    const offset = text.split("\n").slice(0, line - 1).join("\n").length + (line > 1 ? 1 : 0);
    el.focus();
    el.setSelectionRange(offset, offset);
    el.scrollTop = (line - 3) * 18;
  }
  return (
    <div class="editor">
      <div class="editor-body">
        <div class="gutter" ref={gutter} aria-hidden="true">
          {Array.from({ length: count }, (_, i) => (
            <div class={marks.has(i + 1) ? "bad" : ""} title={marks.get(i + 1)}>
              {marks.has(i + 1) ? "●" : i + 1}
            </div>
          ))}
        </div>
        <textarea
          ref={area}
          aria-label="workflow definition (JSON)"
          spellcheck={false}
          class="mono"
          value={text}
          rows={Math.min(30, Math.max(8, count + 1))}
          onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
          onScroll={(e) => gutter.current && (gutter.current.scrollTop = (e.target as HTMLTextAreaElement).scrollTop)}
        />
      </div>
      <button onClick={apply}>Apply</button> {note && <span class="ok">{note}</span>}
      {errors.length > 0 && (
        <ul class="field-errors" role="alert" aria-label="validation errors">
          {errors.map((e) => {
            const line = [...marks.entries()].find(([, m]) => m.includes(e.message))?.[0] ?? 1;
            return (
              <li>
                <button class="link" onClick={() => jump(line)}>
                  line {line}
                </button>{" "}
                {e.node && <strong>node {e.node}</strong>} {e.field && <code>{e.field}</code>}: {e.message}
              </li>
            );
          })}
        </ul>
      )}
      <ErrorBox error={error} />
    </div>
  );
}

/** A line diff (longest common subsequence) of two versions' definitions. */
function VersionDiff({ name, a, b }: { name: string; a: number; b: number }) {
  const [rows, setRows] = useState<[string, string][] | null>(null);
  useEffect(() => {
    Promise.all([a, b].map((v) => call("get", "/v1/workflows/{name}", { path: { name }, query: { version: v } }))).then(([x, y]) =>
      setRows(diffLines(JSON.stringify(x.definition, null, 2).split("\n"), JSON.stringify(y.definition, null, 2).split("\n"))),
    );
  }, [name, a, b]);
  if (!rows) return <Loading what="the diff" />;
  return (
    <pre class="diff" aria-label={`diff of v${a} and v${b}`}>
      {rows.map(([op, line]) => (
        <div class={op === "+" ? "add" : op === "-" ? "del" : ""}>
          {op} {line}
        </div>
      ))}
    </pre>
  );
}

export function diffLines(x: string[], y: string[]): [string, string][] {
  x = x.slice(0, 3000);
  y = y.slice(0, 3000);
  const n = x.length, m = y.length;
  const t = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) t[i][j] = x[i] === y[j] ? t[i + 1][j + 1] + 1 : Math.max(t[i + 1][j], t[i][j + 1]);
  const out: [string, string][] = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) out.push([" ", x[i++]]), j++;
    else if (j < m && (i >= n || t[i][j + 1] >= t[i + 1][j])) out.push(["+", y[j++]]);
    else out.push(["-", x[i++]]);
  }
  return out;
}
