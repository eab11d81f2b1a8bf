// The browser GPU terminal.
//
//   #/terminal?project=P&gpu_type=T  starts a session in P (on a T GPU)
//                                    and opens its terminal; the address
//                                    then becomes #/terminal/ID
//   #/terminal/ID                    opens a new shell in running session ID
//
// It starts or opens at once only when this console's own button or link
// sent the page here (terminal/intent.ts): an address alone (a link from
// another site, a bookmark, a reload, a return through history) shows a
// confirm step first, "Start session" or "Open shell", since either
// acts in the signed-in user's name.
//
// The shell is an attachment like any `devgpu shell`: it survives a
// dropped connection within the session's detach grace
// (terminal/connection.ts), and closing the tab, reloading, leaving the
// page or pressing "End session" closes it, which ends the session
// `closed` when it was the last. So while it is open the browser asks
// before the page unloads (its own words), and the console asks before
// it navigates away.
//
// Keyboard: the terminal takes every key, Tab included; Ctrl+Shift+E
// moves the focus out of it to its controls ("Terminal controls", above
// it). "Screen reader mode" turns on xterm.js's screen reader support.
//
// For scripts and tests (the Playwright tests rely on these names):
//   window.devgpuTerminal          the xterm.js Terminal (its buffer is what
//                                  the page shows; keys typed into the page
//                                  reach the shell)
//   document.body.dataset.terminal "starting" (starting the session or
//                                  connecting), "connected", "reconnecting"
//                                  or "ended" (the shell exited, the user
//                                  left, or it could not be had back);
//                                  unset while the page asks to confirm
//   [data-session-id]              the session's id, once known, in its
//                                  attribute and its text
//   role="status"                  the status line; role="alert" an error
//   button "Start session"         the confirm step of a start
//   button "Open shell"            the confirm step of #/terminal/ID
//   button "End session"           leaves, as closing the tab does
//   dialog "Leave the terminal?"   asked on in-app navigation while a shell
//                                  is open: buttons "Leave and end the
//                                  shell" and "Stay"
import { useEffect, useRef, useState } from "preact/hooks";
import type { Terminal } from "@xterm/xterm";
import type { PageProps } from "../routes";
import type { Session } from "../types";
import { api, ApiError } from "../api";
import { guardLeaving, replaceAddress } from "../router";
import { startSession } from "../terminal/start";
import { TerminalConnection, DEFAULT_GRACE, type Phase } from "../terminal/connection";
import { openScreen, type Screen } from "../terminal/xterm";
import { goDurationMs } from "../terminal/duration";
import { active, endMessage } from "../terminal/ending";
import { openTerminal, takeIntent } from "../terminal/intent";
import { Dialog } from "../components/Dialog";
import { time } from "../components/format";
import { setTitle } from "../components/title";

declare global {
  interface Window { devgpuTerminal?: Terminal }
}

// Each visit to a terminal address is a terminal of its own, even at the
// address the page already shows: the router makes a new query object
// per visit.
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

// graceOf is a session's detach grace: absent means none (the API leaves
// a zero grace out).
function graceOf(s: Session): number {
  if (!s.detach_grace) return 0;
  return goDurationMs(s.detach_grace) ?? DEFAULT_GRACE;
}

// activeIDs are the ids of the caller's active sessions, or null when
// they cannot be read: a start compares its answer with them, since a
// start may join one of them rather than create a session.
async function activeIDs(): Promise<Set<string> | null> {
  try {
    const list = await api<Session[]>("GET", "/api/v1/sessions?active=true");
    return new Set(list.map((s) => s.id));
  } catch {
    return null;
  }
}

const SR_KEY = "devgpu.screen-reader-mode";

function storedScreenReaderMode(): boolean {
  try { return localStorage.getItem(SR_KEY) === "1"; } catch { return false; }
}

function TerminalView({ params, query }: PageProps) {
  const box = useRef<HTMLDivElement>(null);
  const controls = useRef<HTMLDivElement>(null);
  const endedHeading = useRef<HTMLHeadingElement>(null);
  const screenRef = useRef<Screen | null>(null);
  const project = query.get("project") || "";
  const gpuType = query.get("gpu_type") || "";
  const wanted = !!params.session || !!project;
  // go: the user asked for this terminal (here or with the button that
  // sent the page here); until then the page asks.
  const [go, setGo] = useState(() => wanted && takeIntent());
  const [id, setID] = useState(params.session || "");
  const [session, setSession] = useState<Session | null>(null);
  const [status, setStatus] = useState("");
  const [error, setError] = useState("");
  const [phase, setPhaseState] = useState<Phase>("starting");
  const [ending, setEnding] = useState<{ session: Session | null; why: string } | null>(null);
  const [leaving, setLeaving] = useState<(() => void) | null>(null);
  const released = useRef(false); // the user agreed to leave: ask no more
  const [screenReader, setScreenReader] = useState(storedScreenReaderMode);
  const conn = useRef<TerminalConnection | null>(null);
  // attached: a connection to a shell exists; open: it has not ended.
  const [attached, setAttached] = useState(false);
  const open = attached && phase !== "ended";

  useEffect(() => { setTitle(id ? `Terminal ${id}` : "GPU terminal"); }, [id]);

  // Before the confirm step of #/terminal/ID, read the session: one that
  // is not running has no shell to offer.
  useEffect(() => {
    if (go || !params.session) return;
    let gone = false;
    api<Session>("GET", `/api/v1/sessions/${encodeURIComponent(params.session)}`).then((s) => {
      if (gone) return;
      setSession(s); setID(s.id);
      if (!active(s) || s.state !== "running") {
        const why = active(s)
          ? `Session ${s.id} is ${s.state}, not running, so no terminal can open in it; start a new one from My GPUs.`
          : `${endMessage(s)} Start a new one from My GPUs.`;
        setEnding({ session: s, why });
        setPhase("ended"); setPhaseState("ended");
      }
    }, (e) => { if (!gone) setError(e instanceof ApiError ? e.message : String(e)); });
    return () => { gone = true; };
  }, [go]);

  useEffect(() => {
    if (!go) return;
    let gone = false;
    let screen: Screen | null = null;
    const phaseOf = (p: Phase, s: string) => {
      if (gone) return;
      setPhase(p); setPhaseState(p); setStatus(s);
    };
    phaseOf("starting", params.session ? `Opening session ${params.session}…` : `Starting a GPU session in project ${project}…`);
    const pending: Uint8Array[] = []; // typed before the connection exists
    const label = (sid: string) => `GPU terminal for session ${sid}`;
    screen = openScreen(box.current!, label(params.session || "being started"), {
      resize: (cols, rows) => conn.current?.resize(cols, rows),
      notice: (s) => { if (!gone) setStatus(s); },
      escape: () => controls.current?.focus(),
      describedBy: "terminal-keys",
      screenReaderMode: screenReader,
    });
    screenRef.current = screen;
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
          const before = await activeIDs();
          if (gone) return;
          s = await startSession({ project, gpu_type: gpuType || undefined }, (msg) => { if (!gone) setStatus(msg); });
          if (gone) {
            // Left while it started: nothing will attach, so stop it, but
            // only when this start created it. A start may join one of
            // the user's running sessions (the shared shell modes), which
            // is not this page's to end.
            const created = before !== null && !before.has(s.id) && s.attachments === 0;
            if (created) void api("DELETE", `/api/v1/sessions/${encodeURIComponent(s.id)}`).catch(() => {});
            return;
          }
          // The address names the session: a reload or a shared link
          // offers this session's shell rather than another start.
          replaceAddress(`/terminal/${encodeURIComponent(s.id)}`);
        }
      } catch (e) {
        fail(e instanceof ApiError ? e.message : String(e));
        return;
      }
      setSession(s); setID(s.id);
      term.textarea?.setAttribute("aria-label", label(s.id));
      const c = new TerminalConnection(s.id, graceOf(s), { cols: term.cols, rows: term.rows }, {
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
      setAttached(true);
      for (const b of pending.splice(0)) c.write(b);
      c.start();
    })();

    // Closing the tab (or leaving the page for another site) closes the
    // shell, as closing `devgpu shell` does. Only a shell the user opened
    // (go) is ever connected, so only such a one leaves.
    const onPageHide = () => { conn.current?.leave(); };
    addEventListener("pagehide", onPageHide);
    return () => {
      gone = true;
      removeEventListener("pagehide", onPageHide);
      conn.current?.leave();
      conn.current = null;
      screen?.dispose();
      screenRef.current = null;
      if (window.devgpuTerminal === term) delete window.devgpuTerminal;
      delete document.body.dataset.terminal;
    };
  }, [go]);

  useEffect(() => () => { delete document.body.dataset.terminal; }, []);

  // While the shell is open, a reload, Ctrl+W or another address makes
  // the browser ask (in its own words), and the console's own navigation
  // asks in a dialog that says the shell will end.
  useEffect(() => {
    if (!open) return;
    const onBeforeUnload = (e: BeforeUnloadEvent) => {
      if (released.current) return;
      e.preventDefault();
      e.returnValue = "";
    };
    addEventListener("beforeunload", onBeforeUnload);
    const unguard = guardLeaving((proceed) => {
      setLeaving(() => proceed);
      return false;
    });
    return () => {
      removeEventListener("beforeunload", onBeforeUnload);
      unguard();
    };
  }, [open]);

  // When the terminal ends with the focus on "End session" (or nowhere),
  // it goes to what the page says now.
  useEffect(() => {
    if (!ending) return;
    const a = document.activeElement;
    if (!a || a === document.body || a.classList.contains("end")) endedHeading.current?.focus();
  }, [!!ending]);

  const end = () => {
    const c = conn.current;
    if (!c || !open) return;
    if (c.leave(true)) {
      setStatus(`Closing the terminal of session ${c.id}…`);
      void c.left();
    }
  };

  const toggleScreenReader = (on: boolean) => {
    setScreenReader(on);
    try { localStorage.setItem(SR_KEY, on ? "1" : "0"); } catch { /* not kept */ }
    if (screenRef.current) screenRef.current.term.options.screenReaderMode = on;
  };

  if (!wanted) {
    return (
      <>
        <h1>GPU terminal</h1>
        <p>Pick a project and a GPU type on <a href="#/">My GPUs</a> to open a terminal.</p>
      </>
    );
  }
  if (!go) {
    return (
      <Confirm project={project} gpuType={gpuType} sessionID={params.session || ""} session={session}
        error={error} ending={ending} endedHeading={endedHeading} onGo={() => setGo(true)} />
    );
  }
  return (
    <div class="gpu-terminal-page">
      <div class="bar">
        <h1>GPU terminal</h1>
        <span>
          {id ? <>Session <code data-session-id={id}>{id}</code></> : "Session starting"}
          {session ? ` · ${session.gpu_type || "GPU"} ${(session.gpus || []).join(",")} · project ${session.project}` : project ? ` · project ${project}` : ""}
        </span>
        <div class="controls" ref={controls} tabIndex={-1} role="group" aria-label="Terminal controls">
          <label class="check">
            <input type="checkbox" checked={screenReader} onChange={(e) => toggleScreenReader(e.currentTarget.checked)} />
            Screen reader mode
          </label>
          <button type="button" class="end" onClick={end} aria-disabled={!open}>End session</button>
        </div>
      </div>
      <p class="status" role="status">{status}</p>
      {error && <p class="error" role="alert">{error}</p>}
      {ending && <Ended ending={ending} headingRef={endedHeading} project={project || session?.project || ""} gpuType={gpuType || session?.gpu_type || ""} />}
      <div ref={box} class="gpu-terminal" role="region" aria-label={`GPU terminal for session ${id || "being started"}`} />
      <p id="terminal-keys" class="hint muted">
        Ctrl+Shift+E moves the focus out of the terminal to its controls; Tab from there leads back into it.
        Ctrl+Shift+C copies the selection; Ctrl+Shift+V or Ctrl+V pastes.
        {!ending && " Closing or reloading this tab ends the shell."}
      </p>
      <Dialog open={leaving !== null} title="Leave the terminal?" onClose={() => setLeaving(null)}>
        <p>Leaving this page ends the shell{id ? ` of session ${id}` : ""}, as closing the tab does; the session ends too when it was its last shell.</p>
        <div class="bar">
          <button type="button" class="danger" onClick={() => {
            const proceed = leaving;
            released.current = true;
            conn.current?.leave();
            setLeaving(null);
            proceed?.();
          }}>Leave and end the shell</button>
          <button type="button" onClick={() => setLeaving(null)}>Stay</button>
        </div>
      </Dialog>
    </div>
  );
}

// Confirm asks before a start or a shell that no button of this console
// asked for.
function Confirm({ project, gpuType, sessionID, session, error, ending, endedHeading, onGo }: {
  project: string; gpuType: string; sessionID: string; session: Session | null; error: string;
  ending: { session: Session | null; why: string } | null;
  endedHeading: { current: HTMLHeadingElement | null }; onGo: () => void;
}) {
  if (ending) {
    return (
      <div class="gpu-terminal-page">
        <h1>GPU terminal</h1>
        <Ended ending={ending} heading="No shell can open" headingRef={endedHeading} project={session?.project || ""} gpuType={session?.gpu_type || ""} />
      </div>
    );
  }
  const question = sessionID
    ? `Open a shell in session ${sessionID}?`
    : `Start a GPU session in project ${project}${gpuType ? ` (GPU type ${gpuType})` : ""}?`;
  return (
    <section class="gpu-terminal-page confirm" aria-labelledby="terminal-confirm">
      <h1>GPU terminal</h1>
      <p id="terminal-confirm" class="question">{question}</p>
      {session && (
        <dl class="facts">
          <dt>Project</dt><dd>{session.project}</dd>
          <dt>GPU</dt><dd>{session.gpu_type} {(session.gpus || []).join(", ")}</dd>
          <dt>Started</dt><dd>{time(session.started_at || session.created_at)}</dd>
          <dt>Shells open</dt><dd>{session.attachments}</dd>
        </dl>
      )}
      <p class="muted">
        {sessionID
          ? "The shell counts as one of the session's attachments; closing its tab closes it, and ends the session when it is the last."
          : "The session holds a GPU, counted against your project's caps and budget, until you end it or its last shell closes."}
      </p>
      {error && <p class="error" role="alert">{error}</p>}
      <p>
        <button type="button" class="primary" onClick={onGo} disabled={!!sessionID && !session && !error}>{sessionID ? "Open shell" : "Start session"}</button>{" "}
        <a href="#/">Back to My GPUs</a>
      </p>
    </section>
  );
}

function Ended({ ending, heading = "The terminal has closed", headingRef, project, gpuType }: {
  ending: { session: Session | null; why: string }; heading?: string;
  headingRef: { current: HTMLHeadingElement | null }; project: string; gpuType: string;
}) {
  const s = ending.session;
  const again = () => openTerminal({ project, gpu_type: gpuType || undefined });
  return (
    <section class="ended" aria-labelledby="terminal-ended">
      <h2 id="terminal-ended" ref={headingRef} tabIndex={-1}>{heading}</h2>
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
