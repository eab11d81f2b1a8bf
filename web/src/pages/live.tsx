// Live sessions (#/admin/sessions): every active session the caller may
// see, pushed by the server (GET /api/v1/sessions/live, server-sent
// events, each a whole LiveSnapshot), with what keeps each one alive.
// Stop asks for a reason; the row leaves by itself when the stream says
// the session ended.
import { useEffect, useId, useState } from "preact/hooks";
import { api } from "../api";
import type { PageProps } from "../routes";
import type { LiveSession, LiveSnapshot } from "../types";
import { ErrorText, Status } from "../components/messages";
import { Dialog } from "../components/Dialog";
import { Field } from "../components/Field";
import { Table } from "../components/Table";
import { useNow } from "../components/useApi";
import { clock, since } from "../components/format";
import { useLive } from "../components/live";

export function LivePage({ me }: PageProps) {
  // Admins watch everything they administer (all=1, which the server
  // refuses to a developer); a developer watches their own sessions.
  const admin = me.org_admin || (me.projects || []).some((p) => p.role === "admin");
  const live = useLive(admin ? "/api/v1/sessions/live?all=1" : "/api/v1/sessions/live");
  const now = useNow(5000);
  const [stopping, setStopping] = useState<LiveSession | null>(null);
  const [notice, setNotice] = useState("");
  const sessions = live.snapshot?.sessions || [];
  return (
    <>
      <h1>Live sessions</h1>
      <p class="muted">{me.org_admin ? "Every active session in the organisation." : admin ? "Active sessions in the projects you administer." : "Your active sessions."} The list updates by itself.</p>
      <Status>{live.state === "live" ? `Live: updated ${live.snapshot ? clock(live.snapshot.at) : ""}.` : live.state === "connecting" ? "Connecting to the live stream…" : live.state === "reconnecting" ? "Reconnecting to the live stream…" : "The live stream stopped."}{notice ? " " + notice : ""}</Status>
      <ErrorText error={live.error} />
      {live.snapshot && (
        <Table caption={`Active sessions (${sessions.length})`} class="live"
          head={["Session", "User", "Project", "GPU type", "Region", "Runtime", "State", "Age", "Shells", "Last activity", "GPU use", "Why alive", "Actions"]}
          empty="No active sessions.">
          {sessions.map((s) => (
            <tr data-session={s.id}>
              <th scope="row"><code>{s.id}</code></th>
              <td>{s.user}</td>
              <td>{s.project}</td>
              <td>{s.gpu_type}{s.gpus?.length > 1 ? ` ×${s.gpus.length}` : ""}</td>
              <td>{s.region}</td>
              <td>{s.backend || ""}</td>
              <td><span class={"state " + s.state}>{s.state}</span></td>
              <td>{since(s.started_at || s.created_at, now)}</td>
              <td>{shells(s)}</td>
              <td>{s.last_activity ? `${since(s.last_activity, now)} ago` : "unknown"}</td>
              <td>{s.gpu_utilization === undefined || s.gpu_utilization === null ? "unknown" : `${Math.round(s.gpu_utilization)}%`}</td>
              <td class="why">{s.alive_because || ""}</td>
              <td><button type="button" aria-label={`Stop session ${s.id}`} onClick={() => { setNotice(""); setStopping(s); }}>Stop</button></td>
            </tr>
          ))}
        </Table>
      )}
      <StopDialog session={stopping} onDone={(msg) => {
        setStopping(null);
        if (!msg) return;
        setNotice(msg);
        // The row goes when the stream says so: keep focus in the page.
        requestAnimationFrame(() => document.getElementById("main")?.focus());
      }} />
    </>
  );
}

// shells: "1 shell", "2 (1 terminal, 1 shell)", or "none".
function shells(s: LiveSession): string {
  const list = s.shells || [];
  if (!list.length) return "none";
  const count = (k: string) => list.filter((a) => a.kind === k).length;
  const parts = [["terminal", count("terminal")], ["shell", count("shell")]]
    .filter(([, n]) => n).map(([k, n]) => `${n} ${k}${n === 1 ? "" : "s"}`);
  return parts.length === 1 ? parts[0] : `${list.length} (${parts.join(", ")})`;
}

function StopDialog({ session, onDone }: { session: LiveSession | null; onDone: (msg: string) => void }) {
  const [reason, setReason] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const id = useId();
  useEffect(() => { setReason(""); setError(null); }, [session?.id]);
  const stop = async (e: Event) => {
    e.preventDefault();
    if (!session || busy) return;
    if (!reason.trim()) { setError(new Error("Give a reason: the user is told it and the audit log keeps it.")); return; }
    setBusy(true); setError(null);
    try {
      await api("DELETE", `/api/v1/sessions/${encodeURIComponent(session.id)}?reason=${encodeURIComponent(reason.trim())}`);
      onDone(`Session ${session.id} is stopping.`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Dialog open={session !== null} title={session ? `Stop session ${session.id}` : "Stop session"} onClose={() => onDone("")}>
      {session && (
        <form onSubmit={stop}>
          <p>{session.user}'s session in {session.project} ends now; its shells are cut.</p>
          <Field id={id + "-reason"} label="Reason" hint="Shown to the user and kept in the audit log.">
            <input id={id + "-reason"} type="text" value={reason} maxLength={200} onInput={(e) => setReason(e.currentTarget.value)} aria-describedby={id + "-reason-hint"} />
          </Field>
          <ErrorText error={error} />
          <div class="bar">
            <button type="submit" class="danger">Stop session</button>
            <button type="button" onClick={() => onDone("")}>Cancel</button>
          </div>
        </form>
      )}
    </Dialog>
  );
}
