// The browser GPU terminal.
//
//   #/terminal?project=P&gpu_type=T  starts a session in P (on a T GPU)
//                                    and opens its terminal; the address
//                                    then becomes #/terminal/ID, so that a
//                                    reload attaches rather than starting
//                                    another
//   #/terminal/ID                    opens a new shell in running session ID
//
// The shell is an attachment like any `devgpu shell`: it survives a
// dropped connection within the session's detach grace
// (terminal/connection.ts), and closing the tab, leaving the page or
// pressing "End session" closes it, which ends the session `closed` when
// it was the last.
//
// For scripts and tests (the Playwright tests rely on these names):
//   window.devgpuTerminal          the xterm.js Terminal (its buffer is what
//                                  the page shows; keys typed into the page
//                                  reach the shell)
//   document.body.dataset.terminal "starting" (starting the session or
//                                  connecting), "connected", "reconnecting"
//                                  or "ended" (the shell exited, the user
//                                  left, or it could not be had back)
//   [data-session-id]              the session's id, once known, in its
//                                  attribute and its text
//   role="status"                  the status line; role="alert" an error
//   button "End session"           leaves, as closing the tab does
import { useEffect, useRef, useState } from "preact/hooks";
import type { Terminal } from "@xterm/xterm";
import type { PageProps } from "../routes";
import type { Session } from "../types";
import { api, ApiError } from "../api";
import { navigate } from "../router";
import { startSession } from "../terminal/start";
import { TerminalConnection, DEFAULT_GRACE, type Phase } from "../terminal/connection";
import { openScreen, type Screen } from "../terminal/xterm";
import { goDurationMs } from "../terminal/duration";
import { active, endMessage } from "../terminal/ending";
import { time } from "../components/format";

declare global {
  interface Window { devgpuTerminal?: Terminal }
}

// Each visit to a terminal address is a terminal of its own, even at the
// address the page already shows (a start replaces its address without
// the router knowing): the router makes a new query object per visit.
const visits = new WeakMap<URLSearchParams, number>();
let visitCount = 0;

export function TerminalPage(p: PageProps) {
  let visit = visits.get(p.query);
  if (visit === undefined) visits.set(p.query, (visit = ++visitCount));
  return <TerminalView key={visit} {...p} />;
}

const encoder = new TextEncoder();

// latin1 turns xterm's binary strings (mouse reports) into their bytes.
function latin1(s: string): Uint8Array {
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i) & 0xff;
  return b;
}

function setPhase(p: Phase) { document.body.dataset.terminal = p; }

function TerminalView({ params, query }: PageProps) {
  const box = useRef<HTMLDivElement>(null);
  const [id, setID] = useState(params.session || "");
  const [session, setSession] = useState<Session | null>(null);
  const [status, setStatus] = useState("");
  const [error, setError] = useState("");
  const [phase, setPhaseState] = useState<Phase>("starting");
  const [ending, setEnding] = useState<{ session: Session | null; why: string } | null>(null);
  const conn = useRef<TerminalConnection | null>(null);
  const project = query.get("project") || "";
  const gpuType = query.get("gpu_type") || "";

  useEffect(() => {
    if (!params.session && !project) return;
    let gone = false;
    let screen: Screen | null = null;
    const phaseOf = (p: Phase, s: string) => {
      if (gone) return;
      setPhase(p); setPhaseState(p); setStatus(s);
    };
    phaseOf("starting", params.session ? `Opening session ${params.session}…` : `Starting a GPU session in project ${project}…`);
    const pending: Uint8Array[] = []; // typed before the connection exists
    const label = (sid: string) => `GPU terminal for session ${sid}`;
    screen = openScreen(box.current!, label(params.session || "being started"),
      (cols, rows) => conn.current?.resize(cols, rows),
      (s) => { if (!gone) setStatus(s); });
    const term = screen.term;
    window.devgpuTerminal = term;
    const typed = (b: Uint8Array) => { if (conn.current) conn.current.write(b); else pending.push(b); };
    term.onData((d) => typed(encoder.encode(d)));
    term.onBinary((d) => typed(latin1(d)));
    term.focus();

    const fail = (msg: string) => {
      if (gone) return;
      term.options.disableStdin = true;
      setError(msg);
      phaseOf("ended", msg);
    };

    (async () => {
      let s: Session;
      try {
        if (params.session) {
          s = await api<Session>("GET", `/api/v1/sessions/${encodeURIComponent(params.session)}`);
          if (gone) return;
          if (!active(s) || s.state !== "running") {
            setSession(s); setID(s.id);
            const why = active(s)
              ? `Session ${s.id} is ${s.state}, not running, so no terminal can open in it; start a new one from My GPUs.`
              : `${endMessage(s)} Start a new one from My GPUs.`;
            term.options.disableStdin = true;
            setEnding({ session: s, why });
            phaseOf("ended", why);
            return;
          }
        } else {
          s = await startSession({ project, gpu_type: gpuType || undefined }, (msg) => { if (!gone) setStatus(msg); });
          if (gone) {
            // Left while it started: nothing will attach, so stop it.
            void api("DELETE", `/api/v1/sessions/${encodeURIComponent(s.id)}`).catch(() => {});
            return;
          }
          // A reload attaches to this session rather than starting another.
          history.replaceState(history.state, "", `#/terminal/${encodeURIComponent(s.id)}`);
        }
      } catch (e) {
        fail(e instanceof ApiError ? e.message : String(e));
        return;
      }
      setSession(s); setID(s.id);
      term.textarea?.setAttribute("aria-label", label(s.id));
      const c = new TerminalConnection(s.id, goDurationMs(s.detach_grace) ?? DEFAULT_GRACE, { cols: term.cols, rows: term.rows }, {
        output: (data) => term.write(data),
        notice: (line) => term.write(`\r\n\x1b[2m${line}\x1b[0m\r\n`),
        phase: phaseOf,
        ended: (sess, why) => {
          if (gone) return;
          term.options.disableStdin = true;
          if (sess) setSession(sess);
          setEnding({ session: sess, why });
          phaseOf("ended", why);
        },
      });
      conn.current = c;
      for (const b of pending.splice(0)) c.write(b);
      c.start();
    })();

    // Closing the tab (or leaving the page for another site) closes the
    // shell, as closing `devgpu shell` does.
    const onPageHide = () => { conn.current?.leave(); };
    addEventListener("pagehide", onPageHide);
    return () => {
      gone = true;
      removeEventListener("pagehide", onPageHide);
      conn.current?.leave();
      conn.current = null;
      screen?.dispose();
      if (window.devgpuTerminal === term) delete window.devgpuTerminal;
      delete document.body.dataset.terminal;
    };
  }, []);

  const end = () => {
    const c = conn.current;
    if (!c) return;
    if (c.leave(true)) {
      setStatus(`Closing the terminal of session ${c.id}…`);
      void c.left();
    }
  };

  if (!params.session && !project) {
    return (
      <>
        <h1>GPU terminal</h1>
        <p>Pick a project and a GPU type on <a href="#/">My GPUs</a> to open a terminal.</p>
      </>
    );
  }
  const running = phase === "connected" || phase === "reconnecting" || (phase === "starting" && !!id);
  return (
    <div class="gpu-terminal-page">
      <div class="bar">
        <h1>GPU terminal</h1>
        <span>
          {id ? <>Session <code data-session-id={id}>{id}</code></> : "Session starting"}
          {session ? ` · ${session.gpu_type || "GPU"} ${(session.gpus || []).join(",")} · project ${session.project}` : project ? ` · project ${project}` : ""}
        </span>
        <button type="button" class="end" onClick={end} disabled={!running}>End session</button>
      </div>
      <p class="status" role="status">{status}</p>
      {error && <p class="error" role="alert">{error}</p>}
      {ending && <Ended ending={ending} project={project || session?.project || ""} gpuType={gpuType || session?.gpu_type || ""} />}
      <div ref={box} class="gpu-terminal" role="region" aria-label={`GPU terminal for session ${id || "being started"}`} />
      {!ending && <p class="hint muted">Ctrl+Shift+C copies the selection; Ctrl+Shift+V or Ctrl+V pastes. Closing this tab ends the shell.</p>}
    </div>
  );
}

function Ended({ ending, project, gpuType }: { ending: { session: Session | null; why: string }; project: string; gpuType: string }) {
  const s = ending.session;
  const again = () => {
    const q = new URLSearchParams({ project });
    if (gpuType) q.set("gpu_type", gpuType);
    navigate(`/terminal?${q}`);
  };
  return (
    <section class="ended" aria-labelledby="terminal-ended">
      <h2 id="terminal-ended">The terminal has closed</h2>
      <p>{ending.why}</p>
      {s && (
        <dl class="facts">
          <dt>Session</dt><dd>{s.id}</dd>
          <dt>State</dt><dd data-session-state={s.state}>{s.state}{s.end_reason ? ` (${s.end_reason})` : ""}</dd>
          <dt>GPU</dt><dd>{s.gpu_type} {(s.gpus || []).join(", ")}</dd>
          <dt>Started</dt><dd>{time(s.started_at || s.created_at)}</dd>
          {s.ended_at && <><dt>Ended</dt><dd>{time(s.ended_at)}</dd></>}
        </dl>
      )}
      <p>
        {project && <button type="button" class="primary" onClick={again}>Open a new GPU terminal</button>}{" "}
        <a href="#/">Back to My GPUs</a>
      </p>
    </section>
  );
}
