// Follows a run's server-sent events (GET /v1/runs/{id}/events/stream, authenticated by the
// session cookie). fetch + a stream parser rather than EventSource: every event is named by
// its kind (node.completed, run.failed, ...), and EventSource delivers a named event only to
// a listener registered for that very name. Reconnects after a drop from the last seq seen
// (the API resumes exactly after it), and stops at `end`.
import type { RunEvent } from "../api/client";

export interface Follow {
  close(): void;
}

export function followEvents(
  runId: string,
  after: number,
  onEvents: (events: RunEvent[]) => void,
  onEnd: (status: string | null) => void,
  onState: (connected: boolean) => void,
): Follow {
  const ctl = new AbortController();
  let last = after;
  let closed = false;

  async function once(): Promise<boolean> {
    const res = await fetch(`/v1/runs/${encodeURIComponent(runId)}/events/stream?after=${last}`, {
      headers: { Accept: "text/event-stream" },
      credentials: "same-origin",
      signal: ctl.signal,
    });
    if (!res.ok || !res.body) throw new Error(`event stream: HTTP ${res.status}`);
    onState(true);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buf += value;
      const batch: RunEvent[] = [];
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let name = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (!data) continue;
        if (name === "end") {
          if (batch.length) onEvents(batch);
          onEnd((JSON.parse(data) as { status: string | null }).status);
          return true;
        }
        const ev = JSON.parse(data) as RunEvent;
        if (ev.seq > last) {
          last = ev.seq;
          batch.push(ev);
        }
      }
      if (batch.length) onEvents(batch);
    }
  }

  (async () => {
    let delay = 500;
    while (!closed) {
      try {
        if (await once()) return;
        delay = 500;
      } catch (e) {
        if (closed) return;
      }
      onState(false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  })();

  return {
    close() {
      closed = true;
      ctl.abort();
    },
  };
}
