// The dashboard's only door to agently: the REST API under /v1, typed by schema.gen.ts
// (generated from docs/openapi.json), so `tsc` refuses a path, parameter, body or field the
// API does not document. Authentication is the session cookie (HttpOnly: scripts never see
// it); every request that changes something carries the session's CSRF token.
import type { components, paths } from "./schema.gen";

export type Schemas = components["schemas"];
export type Run = Schemas["Run"];
export type RunSummary = Schemas["RunSummary"];
export type NodeState = Schemas["NodeState"];
export type RunEvent = Schemas["Event"];
export type Workflow = Schemas["Workflow"];
export type WorkflowVersion = Schemas["WorkflowVersion"];
export type Approval = Schemas["Approval"];
export type Secret = Schemas["Secret"];
export type Session = Schemas["Session"];
export type RunStatus = Run["status"];

type Method = "get" | "post" | "put" | "patch" | "delete";
type Op<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;
type JsonOf<R> = R extends { content: { "application/json": infer J } } ? J : undefined;
type Success<O> = O extends { responses: infer R }
  ? R extends { 200: infer A }
    ? JsonOf<A>
    : R extends { 201: infer B }
      ? JsonOf<B>
      : undefined
  : never;
type BodyOf<O> = O extends { requestBody?: { content: { "application/json": infer B } } } ? B : never;
type PathParams<O> = O extends { parameters: { path: infer X } } ? X : never;
type QueryOf<O> = O extends { parameters: { query?: infer Q } } ? Q : never;

export interface FieldError {
  node?: string | null;
  field?: string | null;
  message: string;
}

/** An API error ({"error": {code, message, detail, hint, ...}}) or a network failure. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly detail: string | null = null,
    readonly hint: string | null = null,
    readonly errors: FieldError[] = [],
  ) {
    super(message);
  }
  /** One line for a person: message, detail and hint. */
  describe(): string {
    return [this.message, this.detail, this.hint].filter(Boolean).join(" — ");
  }
}

let csrfToken = "";
export function setCsrfToken(token: string) {
  csrfToken = token;
}

/** Called when a request finds the session gone (401): the app shows the sign-in page. */
let onSignedOut: () => void = () => {};
export function whenSignedOut(f: () => void) {
  onSignedOut = f;
}

function fill(pattern: string, params: Record<string, string | number> | undefined): string {
  return pattern.replace(/\{(\w+)\}/g, (_, k: string) => encodeURIComponent(String(params?.[k] ?? "")));
}

export interface CallOptions<O> {
  path?: PathParams<O>;
  query?: QueryOf<O>;
  body?: BodyOf<O>;
  signal?: AbortSignal;
}

/** A read answered 503 with Retry-After (the database is down, busy or slow: docs/api.md,
 * "Errors") is tried again after it, three attempts in all; the wait before the next
 * attempt, or null to answer with this response. A change is never repeated here: it may
 * have happened. */
const READ_ATTEMPTS = 3;
function retryAfterMs(res: Response, method: Method, attempt: number): number | null {
  const header = res.headers.get("Retry-After");
  const seconds = header === null ? NaN : Number(header);
  if (res.status !== 503 || method !== "get" || attempt >= READ_ATTEMPTS || !(seconds >= 0)) return null;
  return Math.min(seconds, 10) * 1000;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(t);
        reject(new DOMException("aborted", "AbortError"));
      },
      { once: true },
    );
  });
}

/** One typed request: call("post", "/v1/runs/{id}/cancel", {path: {id}}). */
export async function call<P extends keyof paths, M extends Method>(
  method: M,
  pattern: P,
  opts: CallOptions<Op<P, M>> = {},
): Promise<Success<Op<P, M>>> {
  let url = fill(pattern as string, opts.path as Record<string, string> | undefined);
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries((opts.query ?? {}) as Record<string, unknown>))
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  if ([...q].length) url += `?${q}`;
  const headers: Record<string, string> = { Accept: "application/json" };
  if (method !== "get") headers["X-CSRF-Token"] = csrfToken;
  let body: string | undefined;
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.body);
  }
  let res: Response;
  let text: string;
  for (let attempt = 1; ; attempt++) {
    try {
      res = await fetch(url, { method: method.toUpperCase(), headers, body, credentials: "same-origin", signal: opts.signal });
    } catch (e) {
      if ((e as Error).name === "AbortError") throw e;
      throw new ApiError(0, "network", "could not reach the server", String(e), "check that agently is running");
    }
    text = await res.text(); // read even when empty (204): an unread body is aborted
    const wait = retryAfterMs(res, method, attempt);
    if (wait === null) break;
    await sleep(wait, opts.signal);
  }
  if (res.status === 204) return undefined as Success<Op<P, M>>;
  let json: unknown = undefined;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    /* not JSON: reported below */
  }
  if (!res.ok) {
    const e = (json as { error?: Record<string, unknown> } | undefined)?.error ?? {};
    const err = new ApiError(
      res.status,
      String(e.code ?? "http_" + res.status),
      String(e.message ?? res.statusText),
      (e.detail as string | null) ?? null,
      (e.hint as string | null) ?? null,
      (e.errors as FieldError[] | undefined) ?? [],
    );
    if (res.status === 401 && !url.startsWith("/v1/sessions")) onSignedOut();
    throw err;
  }
  return json as Success<Op<P, M>>;
}

export function uuid(): string {
  return crypto.randomUUID();
}
