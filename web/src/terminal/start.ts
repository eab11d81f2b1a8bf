// Starting a session from the browser: POST /api/v1/sessions with
// progress, whose answer is a stream of SessionEvent lines (the steps of
// a slow start, such as an image pull), then the session or a problem.
import { apiFetch, ApiError } from "../api";
import type { Session, SessionEvent } from "../types";

export interface StartRequest { project: string; gpu_type?: string }

// startSession starts a session and returns it running; progress hears
// each step as a sentence for the status line.
export async function startSession(req: StartRequest, progress: (status: string) => void): Promise<Session> {
  const resp = await apiFetch("POST", "/api/v1/sessions", { ...req, progress: true }, { Accept: "application/x-ndjson" });
  if (!resp.body) throw new ApiError(0, "The browser cannot read the server's answer as it streams; use a current Chrome, Firefox, Edge or Safari.");
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    let chunk: ReadableStreamReadResult<string>;
    try {
      chunk = await reader.read();
    } catch {
      throw new ApiError(0, `The connection to the server broke while session start in project ${req.project} was under way; look under My GPUs for the session before starting another.`);
    }
    if (chunk.done) break;
    pending += chunk.value;
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (!line) continue;
      const ev = JSON.parse(line) as SessionEvent;
      if (ev.problem) throw new ApiError(ev.problem.status, ev.problem.detail || ev.problem.title);
      if (ev.session) { void reader.cancel(); return ev.session; }
      progress(describe(ev, req.project));
    }
  }
  throw new ApiError(0, `The server ended the start of a session in project ${req.project} without an answer; look under My GPUs for the session before starting another.`);
}

// describe words one step as `devgpu shell`'s status line does.
function describe(ev: SessionEvent, project: string): string {
  if (ev.step && ev.total) return `${ev.step} ${Math.floor((ev.done || 0) / 2 ** 20)}/${Math.floor(ev.total / 2 ** 20)} MB`;
  if (ev.step) return ev.step;
  if (ev.position) return `Queued in project ${project}, position ${ev.position}: ${(ev.reason || "").split("; ")[0]}`;
  return `Starting a GPU session in project ${project}…`;
}
