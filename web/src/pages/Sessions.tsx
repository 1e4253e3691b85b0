// This user's dashboard sessions; revoke any of them (its cookie stops working at once).
import { call } from "../api/client";
import { ErrorBox, Loading, Time, useLoad } from "../ui";

export function SessionsPage() {
  const list = useLoad(() => call("get", "/v1/sessions"), []);
  return (
    <section>
      <h1>Sessions</h1>
      <ErrorBox error={list.error} />
      {!list.data ? (
        <Loading what="sessions" />
      ) : (
        <table>
          <thead>
            <tr>
              <th>Browser</th>
              <th>Signed in</th>
              <th>Last used</th>
              <th>Expires</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {list.data.data.map((s) => (
              <tr key={s.id}>
                <td>
                  {(s.user_agent ?? "unknown").slice(0, 60)} {s.current && <strong>(this one)</strong>}
                </td>
                <td>
                  <Time iso={s.created_at} />
                </td>
                <td>
                  <Time iso={s.last_used_at} />
                </td>
                <td>{s.revoked_at ? "revoked" : <Time iso={s.expires_at} />}</td>
                <td>
                  {!s.revoked_at && (
                    <button class="link danger" onClick={() => call("delete", "/v1/sessions/{id}", { path: { id: s.id } }).then(list.reload, list.reload)}>
                      Revoke
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
