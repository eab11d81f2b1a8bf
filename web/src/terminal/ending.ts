// How a session's end is told, in the words `devgpu shell` uses
// (internal/cli/session_end.go's endMessage).
import type { Session } from "../types";

export function active(s: Session): boolean { return s.state !== "ended" && s.state !== "failed"; }

// endMessage says in one sentence why session s ended.
export function endMessage(s: Session): string {
  if (s.state === "failed") {
    return s.error ? `Session ${s.id} failed: ${s.error}` : `Session ${s.id} failed (${s.end_reason || "no reason recorded"}).`;
  }
  const by = (who: string) => (!s.ended_by || s.ended_by === "system" ? who : `${who} ${s.ended_by}`);
  let why: string;
  switch (s.end_reason) {
    case "stopped": why = by("stopped by its owner"); break;
    case "admin": why = by("stopped by administrator"); break;
    case "idle": why = "idle (no input, output or GPU use) for the project's idle timeout"; break;
    case "lifetime": why = "it reached the project's maximum lifetime"; break;
    case "budget": why = `project ${s.project} spent its monthly budget, whose action is to stop sessions; ask a project admin to raise it`; break;
    case "revoked": why = `your access to project ${s.project} was removed`; break;
    case "lost": why = "its processes disappeared (lost)"; break;
    case "detached": why = "its client was away longer than the project's detach grace"; break;
    case "closed": why = "its last shell closed"; break;
    case undefined: case "": why = "no reason recorded"; break;
    default: why = s.end_reason;
  }
  return `Session ${s.id} ended: ${why}.`;
}
