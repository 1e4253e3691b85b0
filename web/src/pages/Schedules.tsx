// Schedules and triggers: cron schedules that start a workflow (list, create, enable or
// disable, delete) and webhook triggers (list, create — the signing secret is shown once —,
// delete).
import { useState } from "preact/hooks";
import { call, type Schemas } from "../api/client";
import { Empty, ErrorBox, Link, ListTable, Time, useLoad } from "../ui";

type Trigger = Schemas["Trigger"];

export function SchedulesPage() {
  const schedules = useLoad(() => call("get", "/v1/schedules"), []);
  const triggers = useLoad(() => call("get", "/v1/triggers"), []);
  const [error, setError] = useState<unknown>(null);
  const [form, setForm] = useState({ workflow: "", cron: "", timezone: "UTC", input: "{}" });
  const [hook, setHook] = useState({ workflow: "", description: "" });
  const [created, setCreated] = useState<Trigger | null>(null);

  async function act(f: () => Promise<unknown>, then: () => void) {
    setError(null);
    try {
      await f();
      then();
    } catch (e) {
      setError(e);
    }
  }
  function createSchedule(e: Event) {
    e.preventDefault();
    let input: Record<string, unknown>;
    try {
      input = form.input.trim() ? JSON.parse(form.input) : {};
    } catch (err) {
      setError(new Error(`the input is not valid JSON: ${String(err)}`));
      return;
    }
    act(
      () => call("post", "/v1/schedules", { body: { workflow: form.workflow.trim(), cron: form.cron.trim(), timezone: form.timezone.trim() || undefined, input: input as never } }),
      () => {
        setForm({ ...form, cron: "" });
        schedules.reload();
      },
    );
  }
  function createTrigger(e: Event) {
    e.preventDefault();
    act(
      async () => setCreated(await call("post", "/v1/triggers", { body: { workflow: hook.workflow.trim(), description: hook.description.trim() || undefined } })),
      () => {
        setHook({ workflow: "", description: "" });
        triggers.reload();
      },
    );
  }
  const set = (k: keyof typeof form) => (e: Event) => setForm({ ...form, [k]: (e.target as HTMLInputElement).value });

  return (
    <section>
      <h1>Schedules and triggers</h1>
      <ErrorBox error={error} />
      <h2>Schedules</h2>
      <form class="filters" onSubmit={createSchedule} aria-label="create a schedule">
        <label>
          Workflow <input value={form.workflow} required onInput={set("workflow")} />
        </label>
        <label>
          Cron <input value={form.cron} required placeholder="*/5 * * * *" onInput={set("cron")} class="mono" />
        </label>
        <label>
          Time zone <input value={form.timezone} onInput={set("timezone")} />
        </label>
        <label>
          Input (JSON) <input value={form.input} onInput={set("input")} class="mono" />
        </label>
        <button type="submit">Create schedule</button>
      </form>
      <ErrorBox error={schedules.error} />
      <ListTable
        rows={schedules.data?.data}
        what="schedules"
        empty={<Empty>No schedules.</Empty>}
        label="schedules"
        head={
          <>
            <th>Workflow</th>
            <th>Cron</th>
            <th>Next</th>
            <th>Last run</th>
            <th>Enabled</th>
            <th />
          </>
        }
        row={(s) => (
          <tr key={s.id} data-schedule={s.id}>
            <td>
              <Link href={`/workflows/${encodeURIComponent(s.workflow)}`}>{s.workflow}</Link>
            </td>
            <td class="mono">
              {s.cron} <span class="muted">{s.timezone}</span>
            </td>
            <td>{s.enabled ? <Time iso={s.next_run_at} /> : <span class="muted">—</span>}</td>
            <td>
              {s.last_run_id ? (
                <Link href={`/runs/${s.last_run_id}`}>
                  <Time iso={s.last_run_at} />
                </Link>
              ) : (
                <span class="muted">never</span>
              )}
              {s.last_error && <span class="danger"> {s.last_error}</span>}
            </td>
            <td>
              <input
                type="checkbox"
                aria-label={`schedule ${s.workflow} ${s.cron} enabled`}
                checked={s.enabled}
                onChange={(e) => act(() => call("patch", "/v1/schedules/{id}", { path: { id: s.id }, body: { enabled: (e.target as HTMLInputElement).checked } }), schedules.reload)}
              />
            </td>
            <td>
              <button class="link danger" onClick={() => confirm(`Delete the schedule ${s.cron} of ${s.workflow}?`) && act(() => call("delete", "/v1/schedules/{id}", { path: { id: s.id } }), schedules.reload)}>
                Delete
              </button>
            </td>
          </tr>
        )}
      />

      <h2>Webhook triggers</h2>
      <form class="filters" onSubmit={createTrigger} aria-label="create a webhook trigger">
        <label>
          Workflow <input value={hook.workflow} required onInput={(e) => setHook({ ...hook, workflow: (e.target as HTMLInputElement).value })} />
        </label>
        <label>
          Description <input value={hook.description} onInput={(e) => setHook({ ...hook, description: (e.target as HTMLInputElement).value })} />
        </label>
        <button type="submit">Create trigger</button>
      </form>
      {created?.secret && (
        <div class="ask" role="status">
          <strong>Signing secret</strong> <code data-testid="trigger-secret">{created.secret}</code>
          <span class="muted">shown only now: deliveries to {location.origin + created.url} are signed with it</span>
          <button class="link" onClick={() => setCreated(null)}>
            Done
          </button>
        </div>
      )}
      <ErrorBox error={triggers.error} />
      <ListTable
        rows={triggers.data?.data}
        what="triggers"
        empty={<Empty>No webhook triggers.</Empty>}
        label="webhook triggers"
        head={
          <>
            <th>Workflow</th>
            <th>URL</th>
            <th>Description</th>
            <th>Last fired</th>
            <th />
          </>
        }
        row={(t) => (
          <tr key={t.id} data-trigger={t.id}>
            <td>
              <Link href={`/workflows/${encodeURIComponent(t.workflow)}`}>{t.workflow}</Link>
            </td>
            <td class="mono">{t.url}</td>
            <td>{t.description ?? ""}</td>
            <td>{t.last_run_id ? <Link href={`/runs/${t.last_run_id}`}>{<Time iso={t.last_fired_at} />}</Link> : <span class="muted">never</span>}</td>
            <td>
              <button class="link danger" onClick={() => confirm(`Delete the trigger of ${t.workflow}? Its URL stops working at once.`) && act(() => call("delete", "/v1/triggers/{id}", { path: { id: t.id } }), triggers.reload)}>
                Delete
              </button>
            </td>
          </tr>
        )}
      />
    </section>
  );
}
