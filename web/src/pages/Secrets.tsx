// Secrets: names only (values are write-only: the API never answers one); set and delete.
import { useState } from "preact/hooks";
import { call } from "../api/client";
import { Empty, ErrorBox, ListTable, Time, useLoad } from "../ui";

export function SecretsPage() {
  const list = useLoad(() => call("get", "/v1/secrets"), []);
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const [error, setError] = useState<unknown>(null);
  async function put(e: Event) {
    e.preventDefault();
    try {
      await call("put", "/v1/secrets/{name}", { path: { name }, body: { value } });
      setName("");
      setValue("");
      setError(null);
      list.reload();
    } catch (err) {
      setError(err);
    }
  }
  async function remove(n: string) {
    if (!confirm(`Delete the secret ${n}?`)) return;
    try {
      await call("delete", "/v1/secrets/{name}", { path: { name: n } });
      list.reload();
    } catch (err) {
      setError(err);
    }
  }
  return (
    <section>
      <h1>Secrets</h1>
      <form class="filters" onSubmit={put} aria-label="set a secret">
        <label>
          Name <input value={name} required onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          Value <input type="password" autocomplete="off" value={value} required onInput={(e) => setValue((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit">Set</button>
      </form>
      <ErrorBox error={error || list.error} />
      <ListTable
        rows={list.data?.data}
        what="secrets"
        empty={<Empty>No secrets. Workflows read them as {"${ secrets.NAME }"}.</Empty>}
        head={
          <>
            <th>Name</th>
            <th>Key version</th>
            <th>Updated</th>
            <th />
          </>
        }
        row={(s) => (
          <tr key={s.name}>
            <td class="mono">{s.name}</td>
            <td>{s.key_version}</td>
            <td>
              <Time iso={s.updated_at} />
            </td>
            <td>
              <button class="link danger" onClick={() => remove(s.name)}>
                Delete
              </button>
            </td>
          </tr>
        )}
      />
    </section>
  );
}
