// A run's artifacts: the files it kept (GET /v1/runs/{id}/artifacts), each downloadable when
// the database holds it (GET /v1/runs/{id}/artifacts/{artifact_id}, an attachment); read
// again when the run moves on.
import { useEffect, useState } from "preact/hooks";
import { call, type Schemas } from "../api/client";
import { ErrorBox, ListTable, Time } from "../ui";

type Artifact = Schemas["Artifact"];

function size(n: number): string {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(1)} MB`;
}

export function Artifacts({ runId, version }: { runId: string; version: unknown }) {
  const [list, setList] = useState<Artifact[] | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let live = true;
    (async () => {
      try {
        const all: Artifact[] = [];
        let cursor: string | undefined;
        do {
          const page = await call("get", "/v1/runs/{id}/artifacts", { path: { id: runId }, query: { limit: 200, cursor } });
          all.push(...page.data);
          cursor = page.next_cursor ?? undefined;
        } while (cursor && all.length < 2000);
        if (live) {
          setList(all);
          setError(null);
        }
      } catch (e) {
        if (live) setError(e);
      }
    })();
    return () => {
      live = false;
    };
  }, [runId, version]);
  if (error) return <ErrorBox error={error} />;
  if (!list) return null;
  return (
    <section class="artifacts" aria-label="artifacts">
      <h2>
        Artifacts <span class="muted">({list.length})</span>
      </h2>
      <ListTable
        rows={list}
        what="artifacts"
        empty={<p class="muted">This run kept no files.</p>}
        head={
          <>
            <th>Name</th>
            <th>Node</th>
            <th>Type</th>
            <th class="num">Size</th>
            <th>Created</th>
          </>
        }
        row={(a) => (
          <tr data-artifact={a.id}>
            <td>
              {a.stored === "inline" ? (
                <a href={`/v1/runs/${encodeURIComponent(runId)}/artifacts/${encodeURIComponent(a.id)}`} download={a.name}>
                  {a.name}
                </a>
              ) : (
                <span title="stored outside the database: not downloadable here">{a.name}</span>
              )}
            </td>
            <td>{a.node_id ?? ""}</td>
            <td class="mono">{a.content_type}</td>
            <td class="num">{size(a.size_bytes)}</td>
            <td>
              <Time iso={a.created_at} />
            </td>
          </tr>
        )}
      />
    </section>
  );
}
