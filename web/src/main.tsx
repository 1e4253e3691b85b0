// The dashboard: sign-in, then runs, the run viewer, the inbox, workflows and secrets. Every
// page is a path (so links from e-mails and the CLI open the right page signed in).
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./styles.css";
import { call, setCsrfToken, whenSignedOut, type Session } from "./api/client";
import { match, navigate, useLocation } from "./lib/router";
import { ErrorBox, Link, Loading } from "./ui";
import { RunsPage } from "./pages/Runs";
import { RunPage } from "./pages/Run";
import { InboxPage } from "./pages/Inbox";
import { WorkflowsPage, WorkflowPage } from "./pages/Workflows";
import { SecretsPage } from "./pages/Secrets";
import { SessionsPage } from "./pages/Sessions";
import { AgentsPage, AgentPage } from "./pages/Agents";
import { SchedulesPage } from "./pages/Schedules";

function SignIn({ onSignedIn }: { onSignedIn: (s: Session) => void }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const s = await call("post", "/v1/sessions", { body: { token: token.trim() } });
      setToken("");
      onSignedIn(s);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  return (
    <main class="signin">
      <form onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">agently</h1>
        <p class="muted">Sign in with an API token. The first one is the admin token <code>agently up</code> wrote to <code>.agently/admin-token</code>; <code>agently token create</code> makes more.</p>
        <label for="token">API token</label>
        <input id="token" name="token" type="password" autocomplete="current-password" placeholder="agt_…" value={token} onInput={(e) => setToken((e.target as HTMLInputElement).value)} required />
        <button type="submit" disabled={busy || !token.trim()}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <ErrorBox error={error} />
      </form>
    </main>
  );
}

const NAV: [string, string][] = [
  ["/runs", "Runs"],
  ["/inbox", "Inbox"],
  ["/workflows", "Workflows"],
  ["/agents", "Agents"],
  ["/schedules", "Schedules"],
  ["/secrets", "Secrets"],
  ["/sessions", "Sessions"],
];

function Page({ path }: { path: string }) {
  let m;
  if (path === "/" || path === "/runs") return <RunsPage />;
  if ((m = match("/runs/:id", path))) return <RunPage id={m.id} />;
  if (path === "/inbox") return <InboxPage />;
  if (path === "/workflows") return <WorkflowsPage />;
  if ((m = match("/workflows/:name", path))) return <WorkflowPage name={m.name} />;
  if (path === "/agents") return <AgentsPage />;
  if ((m = match("/agents/:name", path))) return <AgentPage name={m.name} />;
  if (path === "/schedules") return <SchedulesPage />;
  if (path === "/secrets") return <SecretsPage />;
  if (path === "/sessions") return <SessionsPage />;
  return (
    <section>
      <h1>Not found</h1>
      <p>
        No page at <code>{path}</code>. <Link href="/runs">Runs</Link>
      </p>
    </section>
  );
}

function App() {
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const { path } = useLocation();
  useEffect(() => {
    whenSignedOut(() => setSession(null));
    call("get", "/v1/session").then(
      (s) => {
        if (s.session) setCsrfToken(s.session.csrf_token);
        setSession(s.session);
      },
      (e) => setError(e),
    );
  }, []);
  if (error) return <ErrorBox error={error} />;
  if (session === undefined) return <Loading what="the session" />;
  if (session === null)
    return (
      <SignIn
        onSignedIn={(s) => {
          setCsrfToken(s.csrf_token);
          setSession(s);
        }}
      />
    );
  async function signOut() {
    try {
      await call("delete", "/v1/session");
    } finally {
      setSession(null);
      navigate("/");
    }
  }
  const section = "/" + (path.split("/")[1] || "runs");
  return (
    <>
      <header class="top">
        <a class="brand" href="/runs" onClick={(e) => (e.preventDefault(), navigate("/runs"))}>
          agently
        </a>
        <nav aria-label="main">
          {NAV.map(([href, label]) => (
            <Link href={href} class={section === href ? "active" : ""}>
              {label}
            </Link>
          ))}
        </nav>
        <span class="who">
          {session.user.name}
          <button class="link" onClick={signOut}>
            Sign out
          </button>
        </span>
      </header>
      <main>
        <Page path={path} />
      </main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
