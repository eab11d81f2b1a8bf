#!/usr/bin/env node
// echo.mjs — keystroke echo through the web console's terminal, the browser
// half of bench/console.sh (and of compare.sh's "console" section); the
// other half is `benchtool keystroke` on `devgpu shell`, against the same
// server, in the same run.
//
// It drives Debian's Chromium with playwright-core (from web/node_modules:
// `cd web && npm ci`), headless, with a fresh profile: logs in with an API
// token on the console's login page at #/ (My GPUs), picks -gpu-type in
// the "GPU type" list of project P's card (section[data-project=P]) and
// presses its "Open GPU terminal", which starts a session and opens its
// shell at once (an address such as #/terminal?project=P alone would
// stop at the confirm step, "Start session"), waits for
// document.body.dataset.terminal to be "connected" and for a typed
// `echo BENCH…_$((a+b))_OK` to be answered, then types -n keys (after
// -warmup unrecorded ones), one at a time:
//
//   keys mode (default): each `x` is a real key press, sent with
//     page.keyboard.press (CDP Input.dispatchKeyEvent), so it goes through
//     the browser's input pipeline and xterm.js's keyboard handling like a
//     person's key. The clock starts at the keydown event's timeStamp (when
//     the browser made the event, before the page handled it); the CDP call
//     that asks for the key is not counted.
//   input mode: each `x` goes in through window.devgpuTerminal.input("x"),
//     the xterm.js API that fires onData as typing does, and the clock
//     starts just before that call (no keyboard event at all).
//
// In both, the sample ends when xterm.js has parsed the echo into its
// buffer: the first onWriteParsed after which the cursor's line ends in one
// more `x` than before the key. That is the counterpart of what benchtool
// times for `devgpu shell` (the echo read from the PTY, before any terminal
// paints it): key → WebSocket → server → SSH → agent's PTY → echo back →
// WebSocket message → xterm.js parse. A second result, NAME_painted, times
// the same keys until the first onRender after that parse that covers the
// cursor's row (the next animation frame: what a person would see). A
// third, NAME_websocket, is the part of it on the wire as the page sees
// it: from the page's WebSocket send of the key to the arrival of the
// message with its echo (a wrapper of WebSocket, installed before the
// page's scripts, stamps both). Every 40 keys the line is cleared with ^U,
// untimed, so it never wraps.
//
// With --floor it needs no server: the same keys, timed the same way,
// against xterm.js alone on a blank page whose terminal echoes what it is
// typed itself (NAME_floor, NAME_floor_painted): what the browser and
// xterm.js take of the figures above on this machine.
//
// Each result is one JSON line in benchtool's format (bench/cmd/benchtool,
// result.go: name, kind "keystroke", samples and their median/p95/p99), so
// `benchtool report` puts it beside the shell's.
//
// usage: node bench/console/echo.mjs --url http://127.0.0.1:18080 --token TOKEN
//          [--project default] [--gpu-type t4] [-n 300] [--warmup 20]
//          [--mode keys|input] [--name console_terminal_keystroke] [--out results.jsonl]
//          [--chromium /usr/bin/chromium] [--timeout 60] [--screenshot FILE.png]
//        node bench/console/echo.mjs --floor [-n 300] [--mode keys|input] [--out results.jsonl]
import { createRequire } from "node:module";
import { appendFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

const args = parseArgs(process.argv.slice(2));
const requireWeb = createRequire(new URL("../../web/package.json", import.meta.url));
let chromium;
try {
  ({ chromium } = requireWeb("playwright-core"));
} catch {
  fail("playwright-core is not installed in web/node_modules; run `npm ci` in web/ first");
}

const how = args.mode === "keys" ? "key presses" : "term.input";
const label = args.floor ? `xterm.js alone, echoing in the page (${how})` : `browser terminal (${how})`;
const result = {
  name: args.name,
  kind: "keystroke",
  cmd: [args.chromium, args.floor ? "about:blank" : `${args.url}/#/ (My GPUs: ${args.project}, ${args.gpuType}, Open GPU terminal)`],
  label,
  time: new Date().toISOString(),
  n: 0,
  failures: 0,
};
const painted = { ...result, name: args.name + "_painted", label: label + ", until painted" };
// The terminal's own WebSocket, as the page sees it: from sending the key
// to the message that brought its echo (not with --floor).
const wsRound = { ...result, name: args.name + "_websocket", label: "browser terminal, WebSocket send to echo message" };
// Where the figures came from: the browser's version, once it has started.
let version = "";

const profile = mkdtempSync(join(tmpdir(), "devgpu-echo-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  version = context.browser()?.version() || "";
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(args.timeout * 1000);
  const samples = args.floor ? await measureFloor(page) : await measure(page);
  setSamples(result, samples.parsed);
  setSamples(painted, samples.painted);
  setSamples(wsRound, samples.ws);
} catch (e) {
  const msg = String(e?.message || e).split("\n")[0];
  for (const r of [result, painted, wsRound]) {
    r.failures++;
    r.last_error = msg;
  }
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
if (version) process.stderr.write(`echo.mjs: headless Chromium ${version}, ${args.mode} mode\n`);
for (const r of args.floor ? [result, painted] : [result, painted, wsRound]) {
  const line = JSON.stringify(r) + "\n";
  if (args.out) appendFileSync(args.out, line);
  else process.stdout.write(line);
  process.stderr.write(summary(r) + "\n");
}
process.exit(result.failures ? 1 : 0);

// measure logs in, opens the terminal and times the keystrokes.
async function measure(page) {
  // As a person does: log in on My GPUs, pick the GPU type on the
  // project's card and press "Open GPU terminal", which starts a session
  // and opens its shell without the confirm step that an address alone
  // gets (web/src/terminal/intent.ts).
  await page.addInitScript(tapWebSocket);
  await page.goto(`${args.url}/#/`);
  await page.getByLabel("API token").fill(args.token);
  await page.getByRole("button", { name: "Log in with token" }).click();
  const card = page.locator(`section[data-project="${args.project}"]`);
  await card.getByLabel("GPU type").selectOption(args.gpuType);
  await card.getByRole("button", { name: "Open GPU terminal" }).click();
  await page.waitForFunction(() => document.body.dataset.terminal === "connected" && !!window.devgpuTerminal);
  await page.evaluate(installProbe);

  // The shell runs what it is given: its answer, never the echo of the typing.
  const a = 1 + Math.floor(Math.random() * 1000), b = 1 + Math.floor(Math.random() * 1000);
  const tag = Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, "0");
  await page.evaluate((line) => window.devgpuTerminal.input(line), `echo BENCH${tag}_$((${a}+${b}))_OK\r`);
  await page.waitForFunction((want) => window.__echoBench.screen().includes(want), `BENCH${tag}_${a + b}_OK`);
  await page.evaluate(() => window.__echoBench.settle(100, 2000));
  if (args.screenshot) await page.screenshot({ path: args.screenshot });

  const times = await typeKeys(page);
  // End the shell as a person would; closing the page then ends the tab.
  await page.evaluate(() => window.devgpuTerminal.input("\x15exit\r"));
  await page.waitForFunction(() => document.body.dataset.terminal !== "connected", null, { timeout: 10000 }).catch(() => {});
  return times;
}

// measureFloor times the same keys against xterm.js alone: a blank page
// whose terminal echoes what it is typed itself (the console's xterm.js,
// DOM renderer, no WebSocket, server or shell). What the browser and
// xterm.js take of a key's echo on this machine: the floor of the
// browser terminal's figures.
async function measureFloor(page) {
  const lib = requireWeb.resolve("@xterm/xterm");
  await page.setContent('<!doctype html><div id="t" style="width:1200px;height:700px"></div>');
  await page.addStyleTag({ path: join(dirname(lib), "../css/xterm.css") });
  await page.addScriptTag({ path: lib });
  await page.evaluate(() => {
    const term = new window.Terminal({ cols: 120, rows: 30 });
    term.open(document.getElementById("t"));
    term.write("$ ");
    // As a shell's line editor: ^U clears the line, anything else echoes.
    term.onData((d) => term.write(d === "\x15" ? "\r\x1b[K$ " : d));
    window.devgpuTerminal = term;
  });
  await page.evaluate(installProbe);
  return typeKeys(page);
}

// tapWebSocket runs in the page before its scripts: it notes when the
// page last sent binary data (keys) on a WebSocket and when a message last
// arrived (stamped before the page's own handler runs).
function tapWebSocket() {
  const Base = window.WebSocket;
  const tap = (window.__wsTap = { sentAt: undefined, msgAt: undefined });
  window.WebSocket = class extends Base {
    constructor(...a) {
      super(...a);
      this.addEventListener("message", () => { tap.msgAt = performance.now(); });
    }
    send(data) {
      if (typeof data !== "string") tap.sentAt = performance.now();
      return super.send(data);
    }
  };
}

// typeKeys types warmup + n keys, one at a time, and returns the last n's
// times to the echo parsed and painted (and, through the page's WebSocket,
// from its send to the echo's message).
async function typeKeys(page) {
  const parsed = [], shown = [], ws = [];
  await page.evaluate(() => window.devgpuTerminal.focus());
  for (let i = 0; i < args.warmup + args.n; i++) {
    if (i > 0 && i % 40 === 0) {
      await page.evaluate(() => { window.devgpuTerminal.input("\x15"); return window.__echoBench.cleared(); });
    }
    let s;
    if (args.mode === "keys") {
      await page.evaluate(() => window.__echoBench.arm(true));
      await page.keyboard.press("x");
      s = await page.evaluate(() => window.__echoBench.done());
    } else {
      s = await page.evaluate(() => { window.__echoBench.arm(false); return window.__echoBench.done(); });
    }
    if (s.error) throw new Error(`keystroke ${i}: ${s.error}`);
    if (i >= args.warmup) {
      parsed.push(s.parsed);
      shown.push(s.painted);
      if (s.ws !== undefined) ws.push(s.ws);
    }
  }
  return { parsed, painted: shown, ws };
}

// installProbe runs in the page: it watches the terminal for the echo of
// one key at a time.
function installProbe() {
  const term = window.devgpuTerminal;
  const cursorLine = () => {
    const b = term.buffer.active;
    const line = b.getLine(b.baseY + b.cursorY);
    return line ? line.translateToString(true) : "";
  };
  const trailingX = () => /x*$/.exec(cursorLine())[0].length;
  let w = null; // the key in flight
  let lastWrite = performance.now();
  term.onWriteParsed(() => {
    lastWrite = performance.now();
    if (w && w.parsedAt === undefined && trailingX() > w.before) {
      w.parsedAt = performance.now();
      const tap = window.__wsTap;
      if (tap && tap.sentAt !== undefined && tap.msgAt !== undefined && tap.sentAt >= w.start && tap.msgAt >= tap.sentAt) {
        w.ws = tap.msgAt - tap.sentAt;
      }
    }
  });
  term.onRender(({ start, end }) => {
    const y = term.buffer.active.cursorY;
    if (w && w.parsedAt !== undefined && w.paintedAt === undefined && start <= y && y <= end) {
      w.paintedAt = performance.now();
      w.finish();
    }
  });
  // In keys mode the clock starts when the browser made the keydown event.
  document.addEventListener("keydown", (e) => {
    if (w && w.fromKey && e.key === "x" && w.start === undefined) w.start = e.timeStamp;
  }, true);
  window.__echoBench = {
    screen() {
      const b = term.buffer.active;
      let s = "";
      for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + "\n";
      return s;
    },
    // cleared waits until the ^U has emptied the line (at most 5 s), then
    // for the terminal to settle.
    async cleared() {
      const end = performance.now() + 5000;
      while (performance.now() < end && trailingX() > 0) await new Promise((r) => setTimeout(r, 5));
      await this.settle(30, 1000);
    },
    // settle waits until no output has been parsed for quietMs (at most maxMs).
    async settle(quietMs, maxMs) {
      const end = performance.now() + maxMs;
      while (performance.now() < end && performance.now() - lastWrite < quietMs) {
        await new Promise((r) => setTimeout(r, 5));
      }
    },
    // arm expects the echo of one x; without a key event, it types it.
    arm(fromKey) {
      w = { before: trailingX(), fromKey };
      w.promise = new Promise((resolve) => { w.finish = resolve; });
      if (!fromKey) {
        w.start = performance.now();
        term.input("x");
      }
    },
    async done() {
      const cur = w;
      const timer = new Promise((r) => setTimeout(r, 5000, "timeout"));
      const how = await Promise.race([cur.promise.then(() => "ok"), timer]);
      w = null;
      if (how !== "ok") {
        return { error: cur.parsedAt === undefined ? `no echo within 5 s; the line reads ${JSON.stringify(cursorLine())}` : "echo parsed but never painted within 5 s" };
      }
      if (cur.start === undefined) return { error: "the key press never reached the page as a keydown event" };
      return { parsed: cur.parsedAt - cur.start, painted: cur.paintedAt - cur.start, ws: cur.ws };
    },
  };
}

// setSamples fills the distribution as benchtool's Result.setSamples does.
function setSamples(r, ms) {
  r.n = ms.length;
  r.samples_ms = ms;
  if (!ms.length) return;
  const s = [...ms].sort((x, y) => x - y);
  r.median_ms = percentile(s, 0.5);
  r.p95_ms = percentile(s, 0.95);
  r.p99_ms = percentile(s, 0.99);
  r.min_ms = s[0];
  r.max_ms = s[s.length - 1];
  r.mean_ms = s.reduce((a, b) => a + b, 0) / s.length;
}

// percentile interpolates linearly between the closest ranks (benchtool's,
// numpy's and R's default).
function percentile(sorted, q) {
  if (sorted.length === 1) return sorted[0];
  const pos = q * (sorted.length - 1), lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

function summary(r) {
  let s = `${r.name.padEnd(28)} n=${r.n} failed=${r.failures}`;
  if (r.n) s += ` median=${r.median_ms.toFixed(2)} ms p95=${r.p95_ms.toFixed(2)} ms p99=${r.p99_ms.toFixed(2)} ms`;
  if (r.last_error) s += `\n  last error: ${r.last_error}`;
  return s;
}

function parseArgs(argv) {
  const a = {
    url: "", token: process.env.DEVGPU_TOKEN || "", project: "default", gpuType: "t4",
    n: 300, warmup: 20, mode: "keys", name: "console_terminal_keystroke", out: "",
    chromium: "/usr/bin/chromium", timeout: 60, screenshot: "", floor: false,
  };
  const keys = {
    "--url": "url", "--token": "token", "--project": "project", "--gpu-type": "gpuType", "-n": "n",
    "--warmup": "warmup", "--mode": "mode", "--name": "name", "--out": "out", "--chromium": "chromium",
    "--timeout": "timeout", "--screenshot": "screenshot",
  };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--floor") {
      a.floor = true;
      continue;
    }
    const k = keys[argv[i]];
    if (!k || i + 1 >= argv.length) fail(`unknown or incomplete argument ${argv[i]}; see the usage at the top of bench/console/echo.mjs`);
    a[k] = argv[++i];
  }
  for (const k of ["n", "warmup", "timeout"]) {
    a[k] = Number(a[k]);
    if (!Number.isInteger(a[k]) || a[k] < 0) fail(`--${k} must be a whole number, not ${a[k]}`);
  }
  a.url = a.url.replace(/\/+$/, "");
  if (a.mode !== "keys" && a.mode !== "input") fail(`--mode is keys or input, not ${a.mode}`);
  if (a.floor) {
    if (a.name === "console_terminal_keystroke") a.name = "console_terminal_keystroke_floor";
    return a;
  }
  if (!a.url) fail("--url is required: the devgpu server's address, such as http://127.0.0.1:18080");
  if (!a.token) fail("--token (or $DEVGPU_TOKEN) is required: an API token of a member of the project");
  return a;
}

function fail(msg) {
  process.stderr.write(`echo.mjs: ${msg}\n`);
  process.exit(2);
}
