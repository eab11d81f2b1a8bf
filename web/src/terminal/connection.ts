// The browser terminal's connection to its shell (the protocol is
// sdk/terminal.go's): a WebSocket that carries the terminal's bytes both
// ways, and survives a dropped connection as `devgpu shell` does
// (internal/cli/reconnect.go). When the socket closes without the shell
// having exited and without the user leaving, it says "reconnecting…",
// opens a new socket with capped backoff and resumes the shell: the
// output it missed is replayed (offset counts what it has shown), and the
// keystrokes the shell did not receive are sent again. It gives up once
// the session's detach grace has passed since the drop, or at once when
// the server says the session has ended or the login is gone, or refuses
// the terminal (in its own words: a close code of 4000 and the HTTP
// status, or the answer to the same request without the upgrade).
//
// A connection can die without a close (a laptop's lid, a NAT that forgot
// it): the server sends a keepalive every interval that "ready" names,
// and a socket quiet for KEEPALIVE_MISSES intervals is dropped and
// resumed, checked on a timer and again when the network comes back or
// the tab is shown (a hidden tab's timers are slowed).
import type { Session, TerminalMessage } from "../types";
import { InputLog } from "./inputlog";
import { active, endMessage } from "./ending";
import { clock } from "../components/format";

// The CLI's backoff, attempt bound and default grace.
export const RESUME_FIRST_WAIT = 100;
export const RESUME_MAX_WAIT = 2000;
export const ATTEMPT_TIMEOUT = 10_000;
export const DEFAULT_GRACE = 60_000;
// DETACH_WAIT bounds how long "End session" waits for the server to
// record the leave (it closes the socket once it has), as the CLI's
// detachWait does.
export const DETACH_WAIT = 3000;
// KEEPALIVE_MISSES: a socket with no message for this many keepalive
// intervals is dead.
export const KEEPALIVE_MISSES = 2.5;

export type Phase = "starting" | "connected" | "reconnecting" | "ended";

export interface Handlers {
  // output is the shell's bytes, for the terminal.
  output(data: Uint8Array): void;
  // notice is a line of our own for the terminal, such as the exit.
  notice(line: string): void;
  // phase is the connection's state and the status line's sentence.
  phase(p: Phase, status: string): void;
  // ended: the terminal is over; session is its state as last read
  // (null when the server did not say), why the sentence that says so.
  ended(session: Session | null, why: string): void;
}

interface Size { cols: number; rows: number }

// How one socket ended: whether its shell was ready, the close's code and
// reason (the server's sentence, sdk/terminal.go), and its address.
interface Closed { ready: boolean; code: number; reason: string; url: string }

// CLOSE_GONE is sdk.TerminalCloseGone: the shell to resume is gone.
const CLOSE_GONE = 4404;
// CLOSE_TAKEN_OVER is sdk.TerminalCloseTakenOver: another page resumed
// this shell (or the session stopped running as it connected).
// Reconnecting would take it back, and the two pages would take it from
// each other for ever.
const CLOSE_TAKEN_OVER = 4409;
// CLOSE_POLICY: the server refused what the page sent.
const CLOSE_POLICY = 1008;
// CLOSE_REFUSED and up (sdk.TerminalCloseRefused): the server refused
// the terminal after the upgrade (4000 + the HTTP status, such as 4429 or
// 4502), its reason the sentence.
const CLOSE_REFUSED = 4000;
// CLOSE_ABANDONED: the code of the close this page gives a socket it
// found dead (no close frame came: 1006, closed abnormally).
const CLOSE_ABANDONED = 1006;

export class TerminalConnection {
  private ws: WebSocket | null = null;
  private token = ""; // the shell's resume token, from "ready"
  private seen = 0; // output bytes shown: the offset a resume asks for
  private input = new InputLog();
  private sent = 0; // the input offset sent over the current socket
  private ready = false;
  private connected = false; // a shell was ready once
  private done = false; // the shell exited, the user left, or we gave up
  private wake: (() => void) | null = null; // ends a backoff wait early
  private socketClosed: Promise<void> = Promise.resolve(); // the current socket's close
  private keepaliveMs = 0; // the server's keepalive interval; 0: none said
  private checkAlive: (() => void) | null = null; // the current socket's dead check
  private onOnline = () => { this.checkAlive?.(); this.wake?.(); };
  private onVisible = () => { if (document.visibilityState === "visible") this.checkAlive?.(); };

  constructor(
    readonly id: string,
    private graceMs: number,
    private size: Size,
    private h: Handlers,
  ) {}

  // start connects and keeps the terminal connected until it ends.
  start() {
    addEventListener("online", this.onOnline);
    document.addEventListener("visibilitychange", this.onVisible);
    void this.run();
  }

  // write sends keystrokes (or a paste) to the shell; typed while
  // disconnected, they go once the shell is back.
  write(data: Uint8Array) {
    if (this.done || data.length === 0) return;
    this.input.append(data);
    this.flush();
  }

  // resize tells the shell the terminal's new size.
  resize(cols: number, rows: number) {
    this.size = { cols, rows };
    if (this.ready) this.send({ type: "resize", cols, rows });
  }

  // leave closes the terminal on purpose (the tab closes, the user ends
  // it): the server counts the attachment closed, and the session ends
  // `closed` when it was the last. It returns at once; the socket closes
  // now (a page going away) or, with wait, when the server has recorded
  // the leave (by DETACH_WAIT). False when the terminal had already ended.
  leave(wait = false): boolean {
    if (this.done) return false;
    this.finish();
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      this.send({ type: "leave" });
      if (wait) setTimeout(() => ws.close(1000, "left"), DETACH_WAIT);
      else ws.close(1000, "left");
    } else {
      ws?.close(1000, "left");
    }
    return true;
  }

  // left waits until the server has recorded a leave(true), and says how
  // the session stands then.
  async left(): Promise<void> {
    const s = await this.settled();
    this.h.ended(s, s ? this.standing(s, "You closed this terminal.") : `You closed this terminal; the state of session ${this.id} could not be read.`);
  }

  private finish() {
    this.done = true;
    this.ready = false;
    removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
    this.wake?.();
  }

  private send(m: TerminalMessage) { this.ws?.send(JSON.stringify(m)); }

  // flush sends the input the shell has not had over this socket.
  private flush() {
    if (!this.ready || !this.ws) return;
    const data = this.input.since(this.sent);
    if (data.length) this.ws.send(data);
    this.sent = this.input.end;
  }

  private async run() {
    let droppedAt = 0; // when the connection was last lost; 0: not yet lost
    let backoff = RESUME_FIRST_WAIT;
    this.h.phase("starting", `Connecting to session ${this.id}…`);
    for (;;) {
      const started = Date.now();
      const closed = await this.open(Math.min(started + ATTEMPT_TIMEOUT, droppedAt ? droppedAt + this.window() : Infinity));
      if (this.done) return;
      // From 4000 on (sdk.TerminalCloseRefused plus an HTTP status) the
      // same request will not do better: the reason is the server's
      // sentence. 4404 and 4409 are the commonest.
      if (closed.code >= CLOSE_REFUSED && closed.code < 5000) {
        if (closed.code === CLOSE_GONE) {
          return this.giveUp(`Lost the connection to session ${this.id}, and ${(closed.reason || "the session's agent no longer has this shell; open a new terminal").replace(/[.]$/, "")}.`);
        }
        if (closed.reason) return this.giveUp(sentence(closed.reason));
        if (closed.code === CLOSE_TAKEN_OVER) return this.giveUp(`This shell of session ${this.id} is now open in another tab or window; use that one.`);
        return this.giveUp(`The server refused the terminal of session ${this.id} (HTTP ${closed.code - CLOSE_REFUSED}); open it again from My GPUs.`);
      }
      if (closed.code === CLOSE_POLICY) return this.giveUp(`The server closed the terminal of session ${this.id}: ${closed.reason || "it refused what this page sent"}.`);
      if (!closed.ready && !this.connected) {
        // The upgrade's refusal reaches no script: ask again without it.
        const refusal = await this.refusal(closed.url);
        if (this.done) return;
        if (refusal) return this.giveUp(refusal);
      }
      if (closed.ready && !this.token) {
        // The agent keeps no shells: this one ended with its connection.
        return this.giveUp(`Lost the connection to session ${this.id}, whose agent keeps no shells to resume, so this shell has ended; open a new terminal from My GPUs.`);
      }
      if (closed.ready || !droppedAt) {
        droppedAt = Date.now();
        backoff = RESUME_FIRST_WAIT;
      }
      const because = closed.reason ? ` (${closed.reason})` : "";
      if (this.connected) this.h.phase("reconnecting", `reconnecting… session ${this.id} keeps the shell until ${clock(new Date(droppedAt + this.graceMs))}${because}.`);
      else this.h.phase("starting", `Connecting to session ${this.id}… the first attempt failed${because}; trying again.`);
      // The session's state says whether another attempt could succeed.
      const verdict = await this.check(Math.min(Date.now() + ATTEMPT_TIMEOUT, droppedAt + this.window()));
      if (this.done) return;
      if (verdict) return this.giveUp(verdict);
      const left = droppedAt + this.window() - Date.now();
      if (left <= 0) return this.giveUp(await this.lostWords());
      await this.sleep(Math.min(backoff, left));
      if (this.done) return;
      backoff = Math.min(2 * backoff, RESUME_MAX_WAIT);
    }
  }

  // window is how long attempts go on after a drop: the detach grace (the
  // session waits no longer for its shell); before the first connection,
  // at least one attempt's time, even with no grace.
  private window(): number {
    return this.connected ? this.graceMs : Math.max(this.graceMs, ATTEMPT_TIMEOUT);
  }

  // open makes one attempt, by deadline, and resolves when its socket
  // closes.
  private open(deadline: number): Promise<Closed> {
    const q = new URLSearchParams({ cols: String(this.size.cols), rows: String(this.size.rows) });
    const resuming = this.connected && this.token !== "";
    if (resuming) { q.set("resume", this.token); q.set("offset", String(this.seen)); }
    const path = `/api/v1/sessions/${encodeURIComponent(this.id)}/terminal?${q}`;
    const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${path}`;
    let closed = () => {};
    this.socketClosed = new Promise((ok) => { closed = ok; });
    return new Promise((resolve) => {
      let ready = false;
      let ws: WebSocket;
      try {
        ws = new WebSocket(url);
      } catch (e) {
        closed();
        resolve({ ready: false, code: CLOSE_POLICY, reason: `the browser refused to open the connection (${(e as Error).message})`, url: path });
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let last = Date.now(); // the last message's arrival
      let over = false;
      const timer = setTimeout(() => { if (!ready) ws.close(); }, Math.max(0, deadline - Date.now()));
      const watchdog = setInterval(() => this.checkAlive?.(), 1000);
      const end = (c: Omit<Closed, "url">) => {
        if (over) return;
        over = true;
        clearTimeout(timer);
        clearInterval(watchdog);
        if (this.checkAlive === alive) this.checkAlive = null;
        if (this.ws === ws) { this.ws = null; this.ready = false; }
        closed();
        resolve({ ...c, url: path });
      };
      // alive drops a socket that has been quiet too long: no close frame
      // will come from a dead connection, so it is abandoned, not awaited
      // (its close still tells the server, should it hear, that this is a
      // drop and not the terminal closing).
      const alive = () => {
        if (!ready || this.done || this.keepaliveMs <= 0) return;
        const quiet = Date.now() - last;
        if (quiet <= KEEPALIVE_MISSES * this.keepaliveMs) return;
        ws.onmessage = null;
        ws.onclose = null;
        try { ws.close(1000, "no keepalive"); } catch { /* already closing */ }
        end({ ready, code: CLOSE_ABANDONED, reason: `nothing from the server for ${Math.round(quiet / 1000)} s` });
      };
      this.checkAlive = alive;
      ws.onmessage = (ev) => {
        last = Date.now();
        if (ev.data instanceof ArrayBuffer) {
          this.seen += ev.data.byteLength;
          this.h.output(new Uint8Array(ev.data));
          return;
        }
        let m: TerminalMessage;
        try { m = JSON.parse(ev.data as string) as TerminalMessage; } catch { return; }
        if (m.type === "ready") {
          ready = true;
          clearTimeout(timer);
          this.onReady(m, resuming);
        } else if (m.type === "exit") {
          void this.onExit(m);
        }
        // Keepalives, and types this page does not know, only count as
        // word from the server.
      };
      ws.onclose = (ev) => end({ ready, code: ev.code, reason: ev.reason });
    });
  }

  private onReady(m: TerminalMessage, resuming: boolean) {
    this.token = m.token || "";
    this.keepaliveMs = m.keepalive_ms && m.keepalive_ms > 0 ? m.keepalive_ms : 0;
    this.ready = this.connected = true;
    if (resuming) {
      const oldest = m.oldest || 0;
      if (oldest > this.seen) {
        this.h.notice(`[${oldest - this.seen} bytes of the shell's output were lost while disconnected]`);
        this.seen = oldest;
      }
      this.sent = m.input_received || 0;
    } else {
      // A new shell: everything typed so far is its input.
      this.sent = 0;
    }
    // The terminal may have changed size since the request said it, and a
    // resize before "ready" was not sent.
    this.send({ type: "resize", cols: this.size.cols, rows: this.size.rows });
    this.flush();
    this.h.phase("connected", `Connected to session ${this.id}.`);
  }

  private async onExit(m: TerminalMessage) {
    if (this.done) return;
    this.finish();
    const how = m.signal ? `killed by signal ${m.signal}` : `exited with status ${m.status ?? 0}`;
    this.h.notice(`[session shell ${how}]`);
    this.h.phase("ended", `The shell ${how}.`);
    const s = await this.settled();
    this.h.ended(s, s ? this.standing(s, `The shell ${how}.`) : `The shell ${how}; the state of session ${this.id} could not be read.`);
  }

  // standing words how the session stands after this terminal ended.
  private standing(s: Session, first: string): string {
    if (!active(s)) return `${first} ${endMessage(s)}`;
    if (s.attachments > 0) return `${first} Session ${this.id} is still ${s.state}: ${s.attachments === 1 ? "another shell is" : `${s.attachments} other shells are`} open.`;
    return `${first} Session ${this.id} is ${s.state}.`;
  }

  // settled reads the session once the socket has closed: the server
  // records the shell's end (and the session's, when it was the last)
  // before it closes the socket.
  private async settled(): Promise<Session | null> {
    await Promise.race([this.socketClosed, new Promise((ok) => setTimeout(ok, DETACH_WAIT + 1000))]);
    return (await readSession(this.id, Date.now() + ATTEMPT_TIMEOUT)).session ?? null;
  }

  // check reads the session after a failed attempt: the sentence that
  // ends the reconnecting when no attempt could succeed, else "".
  private async check(deadline: number): Promise<string> {
    const r = await readSession(this.id, deadline);
    const lost = this.connected ? `Lost the connection to session ${this.id}` : `Could not connect to session ${this.id}`;
    switch (r.status) {
      case 401:
        return `${lost}, and your console login has ended (logged out, expired or revoked); log in again and open the session from My GPUs before its detach grace passes.`;
      case 403:
      case 404:
        return `${lost}, and the server refuses to connect it: ${r.detail}`;
    }
    const s = r.session;
    if (s && (!active(s) || s.state === "stopping")) return endMessage(s);
    return "";
  }

  // lostWords says why the grace passed without a reconnect, as the CLI's
  // giveUp does.
  private async lostWords(): Promise<string> {
    const lost = this.connected ? `Lost the connection to session ${this.id} and could not reconnect within its detach grace` : `Could not connect to session ${this.id} within its detach grace`;
    const r = await readSession(this.id, Date.now() + ATTEMPT_TIMEOUT);
    const s = r.session;
    if (!s) return `${lost}; the server does not answer. If the session still runs, open it again from My GPUs.`;
    if (!active(s) && s.end_reason && s.end_reason !== "detached") return endMessage(s);
    if (!active(s)) return `${lost}; the session has ended.`;
    if (s.state === "running") return `${lost}; the session is still running: open it again from My GPUs.`;
    return `${lost}; the session is ${s.state}.`;
  }

  private async giveUp(why: string) {
    if (this.done) return;
    this.finish();
    this.ws?.close();
    this.h.notice(`[${why}]`);
    this.h.phase("ended", why);
    const r = await readSession(this.id, Date.now() + ATTEMPT_TIMEOUT);
    this.h.ended(r.session ?? null, why);
  }

  // refusal asks the server for the terminal at path (a failed first
  // connection's) without the upgrade: a server that would accept it
  // answers 426, Upgrade Required; any other refusal is its sentence,
  // which ends the attempts. "" when it would accept, or does not answer.
  private async refusal(path: string): Promise<string> {
    let resp: Response;
    try {
      resp = await fetch(path, {
        credentials: "same-origin", headers: { Accept: "application/json" },
        signal: AbortSignal.timeout(ATTEMPT_TIMEOUT),
      });
    } catch {
      return "";
    }
    if (resp.status === 426 || resp.status < 400) {
      await resp.body?.cancel().catch(() => {});
      return "";
    }
    return await problemDetail(resp, `The server refused the terminal of session ${this.id} (HTTP ${resp.status}); open it again from My GPUs.`);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((ok) => {
      const t = setTimeout(() => { this.wake = null; ok(); }, ms);
      this.wake = () => { clearTimeout(t); this.wake = null; ok(); };
    });
  }
}

// readSession reads one session by deadline: the session, or the
// status and words of the server's refusal (status 0: no answer).
async function readSession(id: string, deadline: number): Promise<{ session?: Session; status: number; detail: string }> {
  try {
    const resp = await fetch(`/api/v1/sessions/${encodeURIComponent(id)}`, {
      credentials: "same-origin", headers: { Accept: "application/json" },
      signal: AbortSignal.timeout(Math.max(1, deadline - Date.now())),
    });
    if (resp.ok) return { session: (await resp.json()) as Session, status: resp.status, detail: "" };
    return { status: resp.status, detail: await problemDetail(resp, `the server answered ${resp.status}.`) };
  } catch {
    return { status: 0, detail: "" };
  }
}

// sentence makes a close reason (a clause, at times) a sentence.
function sentence(s: string): string {
  s = s.trim();
  s = s.charAt(0).toUpperCase() + s.slice(1);
  return /[.!?]$/.test(s) ? s : s + ".";
}

// problemDetail is a refusal's sentence: its problem's detail, else
// fallback.
async function problemDetail(resp: Response, fallback: string): Promise<string> {
  try {
    const p = (await resp.json()) as { detail?: string; title?: string };
    return p.detail || p.title || fallback;
  } catch {
    return fallback;
  }
}
