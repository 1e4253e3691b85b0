// The browser tests' harness: a real `agently up` (embedded Postgres, a free port, a scratch
// data directory) and Debian's Chromium driven headless by playwright-core (no browser
// download). Every page is watched: a console error, an uncaught exception, a failed request
// or an HTTP error answer fails the test that caused it. The harness and the dashboard are
// clients as docs/api.md asks: a read answered 503 with Retry-After is tried again after it,
// three attempts in all (a slow database under the sanitizers' load is not a failure; one
// that stays slow is). Screenshots, and agently's and Postgres' logs when it stops, go to
// $AGENTLY_E2E_ARTIFACTS (ctest sets it to build/e2e-artifacts).
import { spawn } from "node:child_process";
import { copyFileSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.AGENTLY_CHROMIUM || "/usr/lib/chromium/chromium";
export const ARTIFACTS = process.env.AGENTLY_E2E_ARTIFACTS || join(tmpdir(), "agently-e2e-artifacts");
mkdirSync(ARTIFACTS, { recursive: true });

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The dashboard's rule (web/src/api/client.ts): a GET answered 503 with Retry-After is
 * tried again after it, three attempts in all; the wait in ms, or null to keep the answer. */
const READ_ATTEMPTS = 3;
function retryAfterMs(method, status, retryAfter, attempt) {
  const seconds = retryAfter === null ? NaN : Number(retryAfter);
  if (status !== 503 || method !== "GET" || attempt >= READ_ATTEMPTS || !(seconds >= 0)) return null;
  return Math.min(seconds, 10) * 1000;
}

/** Starts `agently up`; resolves when /readyz answers 200. */
export async function startAgently() {
  const bin = process.env.AGENTLY_BIN;
  if (!bin) throw new Error("AGENTLY_BIN is not set (ctest sets it to the built agently)");
  const dir = mkdtempSync(join(tmpdir(), "agently-e2e-"));
  const port = await freePort();
  const log = [];
  // a dashboard open in many tabs holds an event stream each: the limit per address is
  // raised through `agently up` (the third test checks it)
  const args = ["up", "--data-dir", dir, "--port", String(port), "--workers", "2", "--api-per-ip-connections", "700"];
  const child = spawn(bin, args, {
    env: { ...process.env, AGENTLY_LOG_LEVEL: "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (d) => log.push(String(d)));
  child.stderr.on("data", (d) => log.push(String(d)));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 90_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`agently up exited ${child.exitCode}:\n${log.join("")}`);
    try {
      const r = await fetch(`${base}/readyz`);
      if (r.status === 200) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) throw new Error(`agently up not ready in 90 s:\n${log.join("")}`);
    await sleep(200);
  }
  const token = readFileSync(join(dir, "admin-token"), "utf8").trim();
  return {
    base,
    token,
    dir,
    log,
    /** A bearer request to the API (for setting things up and checking). */
    async api(method, path, body) {
      for (let attempt = 1; ; attempt++) {
        const r = await fetch(base + path, {
          method,
          headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        const text = await r.text();
        const wait = retryAfterMs(method, r.status, r.headers.get("Retry-After"), attempt);
        if (wait !== null) {
          console.log(`${method} ${path}: ${r.status} ${text}; attempt ${attempt + 1} in ${wait} ms`);
          await sleep(wait);
          continue;
        }
        if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
        return text ? JSON.parse(text) : undefined;
      }
    },
    async stop() {
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 20_000);
      await new Promise((r) => (child.exitCode !== null ? r() : child.on("exit", r)));
      clearTimeout(t);
      // what a failure needs to be understood (a statement timeout is in Postgres' log)
      writeFileSync(join(ARTIFACTS, `agently-${port}.log`), log.join(""));
      try {
        copyFileSync(join(dir, "postgres", "postgres.log"), join(ARTIFACTS, `postgres-${port}.log`));
      } catch {
        /* Postgres never started: agently's log says why */
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
}

/** A page whose problems are collected: problems() lists them (empty = clean). */
export async function watchedPage(browser, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  const expected = []; // [status, path] a test provokes on purpose, each allowed once
  let allowedLogs = 0; // Chrome logs every HTTP error answer as a console error too
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    if (allowedLogs > 0 && m.text().startsWith("Failed to load resource: the server responded")) {
      allowedLogs--;
      return;
    }
    problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
  page.on("requestfailed", (r) => {
    // a request canceled on purpose (a page left mid-poll, the event stream of a run page
    // that closed) is not a failure; anything else (refused, reset, timed out) is
    if (r.failure()?.errorText === "net::ERR_ABORTED") return;
    problems.push(`request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`);
  });
  const attempts = new Map(); // url -> 503s with Retry-After in a row (the dashboard retries)
  page.on("response", (r) => {
    const method = r.request().method();
    if (retryAfterMs(method, r.status(), r.headers()["retry-after"] ?? null, (attempts.get(r.url()) ?? 0) + 1) !== null) {
      attempts.set(r.url(), (attempts.get(r.url()) ?? 0) + 1);
      allowedLogs++;
      console.log(`HTTP ${r.status()} with Retry-After: ${method} ${r.url()} (the dashboard tries again)`);
      return;
    }
    attempts.delete(r.url());
    if (r.status() < 400) return;
    const i = expected.findIndex(([st, path]) => st === r.status() && new URL(r.url()).pathname === path);
    if (i >= 0) {
      expected.splice(i, 1);
      allowedLogs++;
      return;
    }
    problems.push(`HTTP ${r.status()}: ${method} ${r.url()}`);
  });
  return {
    context,
    page,
    problems: () => [...problems, ...expected.map(([st, path]) => `expected HTTP ${st} from ${path} never came`)],
    /** The next answer `status` from `path` is provoked on purpose (an invalid workflow). */
    expectHttp: (status, path) => expected.push([status, path]),
  };
}

export async function screenshot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

export async function signIn(page, base, token) {
  await page.goto(base + "/");
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("navigation", { name: "main" }).waitFor();
}

/**
 * The scripted LLM server of tests/integration (llm_server.h) as a process
 * (tests/web/e2e_llm_server.c; ctest sets AGENTLY_E2E_LLM_SERVER): url is the base URL an
 * agent names; script(steps) appends steps (llm_server.h documents them); count() is the
 * number of requests it received.
 */
export async function startLlmServer() {
  const bin = process.env.AGENTLY_E2E_LLM_SERVER;
  if (!bin) throw new Error("AGENTLY_E2E_LLM_SERVER is not set (ctest sets it to the built e2e_llm_server)");
  const child = spawn(bin, [], { stdio: ["pipe", "pipe", "inherit"] });
  const waiting = [];
  let buf = "";
  child.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      waiting.shift()?.(line);
    }
  });
  const next = () => new Promise((resolve) => waiting.push(resolve));
  const exited = new Promise((r) => child.on("exit", r));
  const url = await Promise.race([next(), exited.then((c) => Promise.reject(new Error(`e2e_llm_server exited ${c}`)))]);
  const ask = async (line) => {
    const answer = next();
    child.stdin.write(line + "\n");
    return answer;
  };
  return {
    url,
    async script(steps) {
      const a = await ask(JSON.stringify(steps));
      if (a !== "ok") throw new Error(`e2e_llm_server: ${a}`);
    },
    async count() {
      return Number(await ask("count"));
    },
    async stop() {
      child.stdin.end();
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Polls the API until the run's status matches re; the run. */
export async function waitRun(agently, id, re, ms = 60_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await agently.api("GET", `/v1/runs/${id}`);
    if (re.test(r.status)) return r;
    if (Date.now() > deadline) throw new Error(`run ${id} is ${r.status}, not ${re}`);
    await sleep(250);
  }
}
