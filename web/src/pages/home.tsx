// "My GPUs": what I can still start in each of my projects, and my
// sessions, as the live stream pushes them.
import { useEffect, useRef, useState } from "preact/hooks";
import type { PageProps } from "../routes";
import type { GPUPool, LiveSession, ProjectStanding } from "../types";
import { api, ApiError } from "../api";
import { openTerminal } from "../terminal/intent";
import { age, goDuration, hours, money } from "../components/format";
import { useLive } from "../components/live";
import { ErrorText } from "../components/messages";
import "../terminal/developer.css";

export function HomePage(_: PageProps) {
  const [standing, setStanding] = useState<ProjectStanding[] | null>(null);
  const [err, setErr] = useState("");
  // Read again whenever my sessions change: they are what it counts.
  const [changes, setChanges] = useState(0);
  useEffect(() => {
    api<ProjectStanding[]>("GET", "/api/v1/standing").then((s) => { setStanding(s); setErr(""); }, (e) => setErr(message(e)));
  }, [changes]);
  return (
    <>
      <h1>My GPUs</h1>
      {err && <p role="alert" class="error">{err}</p>}
      {standing === null && !err && <p aria-busy="true">Loading your projects…</p>}
      {standing && standing.length === 0 && (
        <p>You belong to no project yet; ask a project admin to add you to one.</p>
      )}
      <div class="projects">
        {standing?.map((p) => <ProjectCard key={p.project} p={p} />)}
      </div>
      <MySessions changed={() => setChanges((n) => n + 1)} />
      <p class="muted">Your usage and cost: <a href="#/usage">Usage</a>.</p>
    </>
  );
}

function message(e: unknown): string {
  return e instanceof ApiError || e instanceof Error ? e.message : String(e);
}

// pools sums each GPU type's free and total GPUs over its regions.
function pools(list: GPUPool[]): { type: string; free: number; total: number }[] {
  const by = new Map<string, { type: string; free: number; total: number }>();
  for (const g of list || []) {
    const t = by.get(g.type) || { type: g.type, free: 0, total: 0 };
    t.free += g.free; t.total += g.total;
    by.set(g.type, t);
  }
  return [...by.values()];
}

const gpus = (n: number) => `${n} GPU${n === 1 ? "" : "s"}`;

// cannotStart says why nothing can start in p now, or "".
function cannotStart(p: ProjectStanding, free: number | undefined, type: string): string {
  if (!p.gpu_enabled) return `GPU sessions are disabled in project ${p.project}; a project admin can enable them.`;
  if (!p.gpu_types || p.gpu_types.length === 0) return `No GPU type that project ${p.project} allows is offered now; ask a project admin which types it should allow.`;
  if (p.budget && p.budget.amount > 0 && p.remaining <= 0 && (p.budget.action === "refuse" || p.budget.action === "stop")) {
    return `Project ${p.project} has spent its monthly budget; ask a project admin to raise it.`;
  }
  if (p.can_start === 0) {
    if (p.max_gpus_per_user > 0 && p.my_gpus_in_use >= p.max_gpus_per_user) {
      return `You use ${p.my_gpus_in_use} of your ${gpus(p.max_gpus_per_user)} in project ${p.project}; stop one of your sessions to start another.`;
    }
    if (p.max_gpus > 0 && p.gpus_in_use >= p.max_gpus) {
      return `Project ${p.project} uses ${p.gpus_in_use} of its ${gpus(p.max_gpus)}; try again when one is freed.`;
    }
    if (p.gpu_types.every((t) => t.free === 0)) return `No GPU of the types project ${p.project} allows is free now; try again when one is freed.`;
    return `Nothing can start in project ${p.project} now: the organisation's GPU quota is used up, or others wait in the project's queue; try again when a GPU is freed.`;
  }
  if (free === 0) return `No ${type} GPU is free now; pick another type or try again when one is freed.`;
  return "";
}

function budgetWords(p: ProjectStanding): string {
  const b = p.budget;
  if (!b || b.amount <= 0) return "No monthly budget";
  if (b.unit === "gpu-hours") return `${hours(p.remaining)} of ${hours(b.amount)} left this month`;
  return `${money(p.remaining, p.currency)} of ${money(b.amount, p.currency)} left this month`;
}

function ProjectCard({ p }: { p: ProjectStanding }) {
  const types = pools(p.gpu_types);
  const [type, setType] = useState(types.find((t) => t.free > 0)?.type || types[0]?.type || "");
  const chosen = types.find((t) => t.type === type);
  const why = cannotStart(p, chosen?.free, type);
  const slug = p.project.replace(/[^A-Za-z0-9_-]/g, "_");
  // The button, not an address, starts the session (terminal/intent.ts).
  const open = () => openTerminal({ project: p.project, gpu_type: type || undefined });
  return (
    <section class="project-card" data-project={p.project} aria-labelledby={`project-${slug}`}>
      <h2 id={`project-${slug}`}>{p.project}</h2>
      <dl class="facts">
        <dt>My GPUs in use</dt>
        <dd>{p.max_gpus_per_user > 0 ? `${p.my_gpus_in_use} of ${p.max_gpus_per_user} (my cap)` : `${p.my_gpus_in_use} (no per-user cap)`}</dd>
        <dt>Project GPUs in use</dt>
        <dd>{p.max_gpus > 0 ? `${p.gpus_in_use} of ${p.max_gpus}` : `${p.gpus_in_use} (no project cap)`}</dd>
        <dt>I can still start</dt>
        <dd>{!p.gpu_enabled ? "nothing: GPU sessions are disabled" : gpus(Math.max(0, p.can_start))}</dd>
        <dt>Budget</dt>
        <dd>{budgetWords(p)}</dd>
      </dl>
      {p.gpu_enabled && types.length > 0 && (
        <p>
          <label for={`gpu-${slug}`}>GPU type</label>{" "}
          <select id={`gpu-${slug}`} value={type} onChange={(e) => setType((e.target as HTMLSelectElement).value)}>
            {types.map((t) => <option value={t.type}>{`${t.type} (${t.free} of ${t.total} free)`}</option>)}
          </select>
        </p>
      )}
      <p>
        <button type="button" class="primary" disabled={!!why} aria-describedby={why ? `why-${slug}` : undefined} onClick={open}>Open GPU terminal</button>
      </p>
      {why && <p id={`why-${slug}`} class="why">{why}</p>}
    </section>
  );
}

function MySessions({ changed }: { changed: () => void }) {
  const live = useLive("/api/v1/sessions/live");
  const [err, setErr] = useState("");
  const [notice, setNotice] = useState("");
  const heading = useRef<HTMLHeadingElement>(null);
  // skew is the server's clock less ours; a snapshot comes only when
  // something shown changed, so ages are counted on from it here.
  const [skew, setSkew] = useState(0);
  const [, setTick] = useState(0);
  const snap = live.snapshot;
  useEffect(() => {
    if (!snap) return;
    setSkew(new Date(snap.at).getTime() - Date.now());
    changed();
  }, [snap]);
  useEffect(() => {
    const tick = setInterval(() => setTick((n) => n + 1), 1000);
    return () => clearInterval(tick);
  }, []);
  const stop = async (id: string) => {
    setErr(""); setNotice("");
    try {
      await api("DELETE", `/api/v1/sessions/${encodeURIComponent(id)}`);
    } catch (e) {
      setErr(message(e));
      return;
    }
    setNotice(`Session ${id} is stopping.`);
    // Its row goes when the stream says so: keep the focus in the list.
    heading.current?.focus();
  };
  const at = Date.now() + skew;
  const rows = snap?.sessions || [];
  const state = live.state === "connecting" ? "Connecting to the live view of your sessions…"
    : live.state === "reconnecting" ? "The live view of your sessions was cut; reconnecting…" : "";
  return (
    <section aria-labelledby="my-sessions">
      <h2 id="my-sessions" ref={heading} tabIndex={-1}>My sessions</h2>
      <p role="status" class="status">{[state, notice].filter(Boolean).join(" ")}</p>
      <ErrorText error={live.state === "stopped" ? live.error : null} />
      {err && <p role="alert" class="error">{err}</p>}
      {snap && rows.length === 0 && <p>You have no active sessions.</p>}
      {rows.length > 0 && (
        <table>
          <thead>
            <tr>
              <th scope="col">Session</th><th scope="col">Project</th><th scope="col">GPU type</th>
              <th scope="col">State</th><th scope="col">Age</th><th scope="col">Shells</th>
              <th scope="col">Why it is alive</th><th scope="col"><span class="sr-only">Actions</span></th>
            </tr>
          </thead>
          <tbody>
            {rows.map((s) => <SessionRow key={s.id} s={s} at={at} stop={stop} />)}
          </tbody>
        </table>
      )}
    </section>
  );
}

function shells(s: LiveSession): string {
  const list = s.shells || [];
  if (list.length === 0) return String(s.attachments || 0);
  const terminals = list.filter((a) => a.kind === "terminal").length;
  const parts = [];
  if (terminals) parts.push(`${terminals} in the browser`);
  if (list.length - terminals) parts.push(`${list.length - terminals} other`);
  return `${list.length} (${parts.join(", ")})`;
}

function SessionRow({ s, at, stop }: { s: LiveSession; at: number; stop: (id: string) => Promise<void> }) {
  const [busy, setBusy] = useState(false);
  const running = s.state === "running";
  return (
    <tr data-session-id={s.id}>
      <td><code>{s.id}</code></td>
      <td>{s.project}</td>
      <td>{s.gpu_type}{s.gpus?.length ? ` (${s.gpus.join(", ")})` : ""}</td>
      <td>{s.state}</td>
      <td>{age(at - new Date(s.started_at || s.created_at).getTime())}</td>
      <td>{shells(s)}</td>
      <td>{s.alive_because || (s.detach_grace ? `detach grace ${goDuration(s.detach_grace)}` : "")}</td>
      <td class="actions">
        {running && (
          <a href={`#/terminal/${encodeURIComponent(s.id)}`} aria-label={`Open terminal in session ${s.id}`}
            onClick={(e) => {
              // A plain click opens the shell at once; a new tab or window
              // (a modified click) gets the address only, and asks first.
              if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
              e.preventDefault();
              openTerminal({ session: s.id });
            }}>Open terminal</a>
        )}{" "}
        {s.state !== "stopping" && (
          // Not disabled while it is sent: a disabled button loses the focus.
          <button type="button" aria-label={`Stop session ${s.id}`} aria-disabled={busy}
            onClick={async () => { if (busy) return; setBusy(true); await stop(s.id); setBusy(false); }}>Stop</button>
        )}
      </td>
    </tr>
  );
}
