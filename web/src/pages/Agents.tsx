// Agents: the reusable, versioned agent definitions (/v1/agents): the list (latest version of
// each), one agent's versions, and any version's definition.
import { useState } from "preact/hooks";
import { call } from "../api/client";
import { Empty, ErrorBox, Json, Link, ListTable, Loading, Time, useLoad } from "../ui";

export function AgentsPage() {
  const list = useLoad(() => call("get", "/v1/agents", { query: { limit: 200 } }), []);
  return (
    <section>
      <h1>Agents</h1>
      <ErrorBox error={list.error} />
      <ListTable
        rows={list.data?.data}
        what="agents"
        empty={<Empty>No agents yet: `agently agent apply FILE` stores one; an agent node names it by name.</Empty>}
        label="agents"
        head={
          <>
            <th>Name</th>
            <th>Latest</th>
            <th>Model</th>
            <th>Description</th>
            <th>Applied</th>
          </>
        }
        row={(a) => (
          <tr key={a.id} data-agent={a.name}>
            <td>
              <Link href={`/agents/${encodeURIComponent(a.name)}`}>{a.name}</Link>
            </td>
            <td>v{a.version}</td>
            <td class="mono">
              {a.provider} · {a.model}
            </td>
            <td class="wrap">{a.description ?? ""}</td>
            <td>
              <Time iso={a.created_at} />
            </td>
          </tr>
        )}
      />
    </section>
  );
}

export function AgentPage({ name }: { name: string }) {
  const [version, setVersion] = useState<number | null>(null);
  const agent = useLoad(() => call("get", "/v1/agents/{name}", { path: { name }, query: version ? { version } : {} }), [name, version]);
  const versions = useLoad(() => call("get", "/v1/agents/{name}/versions", { path: { name } }), [name]);
  if (agent.error) return <ErrorBox error={agent.error} />;
  if (!agent.data) return <Loading what="the agent" />;
  const a = agent.data;
  return (
    <section>
      <h1>
        {a.name} <span class="muted">v{a.version}</span>
      </h1>
      <p class="muted">
        applied <Time iso={a.created_at} /> · <span class="mono">sha256 {a.definition_sha256.slice(0, 12)}</span>
      </p>
      <h2>Definition</h2>
      <Json value={a.definition} label="agent definition" />
      <h2>Versions</h2>
      <ErrorBox error={versions.error} />
      <ul class="versions" aria-label="versions">
        {(versions.data?.data ?? []).map((v) => (
          <li>
            <button class="link" aria-current={v.version === a.version ? "true" : undefined} onClick={() => setVersion(v.version)}>
              v{v.version}
            </button>{" "}
            <span class="muted">
              {v.model} · <Time iso={v.created_at} />
            </span>
          </li>
        ))}
      </ul>
    </section>
  );
}
