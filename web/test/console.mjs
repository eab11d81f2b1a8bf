// The web console's browser test: playwright-core drives Debian's Chromium
// against a real devgpu server that e2e/console_test.go started and
// prepared (users, a project, a locked setting, another developer's
// session). Run by that Go test (`go test ./e2e -run Console`), which
// passes everything in the environment:
//
//   DEVGPU_CONSOLE_URL        the server, http://127.0.0.1:PORT
//   DEVGPU_ADMIN_TOKEN        an organisation admin's API token
//   DEVGPU_DEV_TOKEN          a developer's API token (member of PROJECT)
//   DEVGPU_PROJECT            the project (its max_gpus inherited)
//   DEVGPU_GPU_TYPE           the GPU type to open a terminal on
//   DEVGPU_NEW_CAP            the max_gpus the admin sets
//   DEVGPU_LOCKED_SETTING     a setting the organisation locks
//   DEVGPU_LOCKED_REFUSAL     the server's sentence refusing a change of it
//   DEVGPU_OTHER_SESSION      another developer's running session
//   DEVGPU_DETACHED_SESSION   the developer's running session with no shell
//   DEVGPU_PROXY_URL          the server through a TCP proxy of the Go
//                             test's (another origin, the same server)
//   DEVGPU_PROXY_CONTROL      that proxy's control: POST /cut closes every
//                             connection through it and refuses new ones,
//                             POST /resume lets them through again
//   DEVGPU_CHROMIUM           the browser (default /usr/bin/chromium)
//   TMPDIR                    where Chromium's fresh profile goes
//   DEVGPU_TEST_ARTIFACTS     where screenshots (and failures') go
//   DEVGPU_CONSOLE_SCREENSHOTS  also put the page tour there (docs/console)
//   DEVGPU_CONSOLE_RESULT     a JSON file this writes for the Go test
//   DEVGPU_WAIT_SHORT_MS, _MEDIUM_MS, _LONG_MS  internal/testutil's
//                             deadlines, so both languages wait alike
//
// Every scenario runs, each failure is reported with what the page showed
// and a screenshot, and the exit status is 1 when any failed. Nothing
// sleeps: every wait is for a condition, with a deadline from above.
import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import { createServer } from "node:http";
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const env = process.env;
function need(name) {
  if (!env[name]) {
    console.error(`${name} is not set; run this through e2e/console_test.go (go test ./e2e -run Console)`);
    process.exit(2);
  }
  return env[name];
}

// The deadlines: internal/testutil's WaitShort, WaitMedium and WaitLong.
const WAIT = {
  short: Number(env.DEVGPU_WAIT_SHORT_MS || 5000),
  medium: Number(env.DEVGPU_WAIT_MEDIUM_MS || 15000),
  long: Number(env.DEVGPU_WAIT_LONG_MS || 60000),
};
const POLL_MS = 50; // how often a condition is looked at again

const base = need("DEVGPU_CONSOLE_URL");
const adminToken = need("DEVGPU_ADMIN_TOKEN");
const devToken = need("DEVGPU_DEV_TOKEN");
const project = need("DEVGPU_PROJECT");
const gpuType = need("DEVGPU_GPU_TYPE");
const newCap = need("DEVGPU_NEW_CAP");
const lockedSetting = need("DEVGPU_LOCKED_SETTING");
const lockedRefusal = need("DEVGPU_LOCKED_REFUSAL");
const otherSession = need("DEVGPU_OTHER_SESSION");
const detachedSession = need("DEVGPU_DETACHED_SESSION");
const proxyURL = need("DEVGPU_PROXY_URL");
const proxyControl = need("DEVGPU_PROXY_CONTROL");
const artifacts = need("DEVGPU_TEST_ARTIFACTS");
// Playwright gives each launch a fresh profile (--user-data-dir) in the
// temporary directory: the Go test points TMPDIR at one of its own.
need("TMPDIR");
const tour = env.DEVGPU_CONSOLE_SCREENSHOTS || "";
const resultFile = env.DEVGPU_CONSOLE_RESULT || "";
mkdirSync(artifacts, { recursive: true });
if (tour) mkdirSync(tour, { recursive: true });

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
// The accessibility rules every page must pass: WCAG 2.0 and 2.1, A and AA.
const AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];

const result = { session: "", reconnect: "", scenarios: {} };
const failures = [];

function log(...args) { console.log(...args); }

// scenario runs one scenario of the issue's "Done when"; a failure is
// recorded (with a screenshot of every page open) and the next one runs.
async function scenario(name, pages, fn) {
  log(`--- ${name}`);
  try {
    await fn();
    result.scenarios[name] = "pass";
    log(`ok  ${name}`);
  } catch (e) {
    result.scenarios[name] = "fail";
    failures.push(`${name}: ${e.message}`);
    log(`FAIL ${name}: ${e.stack || e}`);
    for (const [i, p] of pages().entries()) {
      if (!p || p.isClosed()) continue;
      const file = join(artifacts, `failed-${name.replace(/[^a-z0-9]+/gi, "-")}-${i}.png`);
      await p.screenshot({ path: file, fullPage: true }).catch(() => {});
      const text = await p.evaluate(() => document.body.innerText).catch(() => "(unreadable)");
      log(`    page ${i} at ${p.url()} (screenshot ${file}) shows:\n${indent(text)}`);
    }
  }
}

// evidence keeps a screenshot of a page and logs what it shows.
async function evidence(p, name) {
  const file = join(artifacts, `failed-${name}.png`);
  await p.screenshot({ path: file, fullPage: true }).catch(() => {});
  const text = await p.evaluate(() => document.body.innerText).catch(() => "(unreadable)");
  log(`    page at ${p.url()} (screenshot ${file}) shows:\n${indent(text)}`);
}

function indent(s) { return String(s).split("\n").map((l) => "      " + l).join("\n"); }

function check(cond, msg) { if (!cond) throw new Error(msg); }

// eventually polls fn (async, returning a truthy value when done) until it
// holds or the deadline passes, and returns its value.
async function eventually(what, ms, fn) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ""}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

// shot saves a screenshot of a page as a test artefact, and into the
// README's tour when asked (inTour false: an artefact only).
const shots = new Set();
async function shot(page, name, inTour = true) {
  const file = `${name}.png`;
  await page.screenshot({ path: join(artifacts, file), fullPage: true });
  if (tour && inTour) await page.screenshot({ path: join(tour, file), fullPage: true });
  shots.add(name);
  log(`    screenshot ${join(artifacts, file)}`);
}

// a11y runs axe-core in the page. The script is evaluated over the
// DevTools protocol, which the page's Content-Security-Policy does not
// govern: the policy stays as the server sent it.
const a11yFailures = [];
async function a11y(page, name) {
  await page.evaluate(() => document.fonts && document.fonts.ready);
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(axeSource);
  const res = await page.evaluate(async (tags) => {
    const r = await window.axe.run(document, { runOnly: { type: "tag", values: tags }, resultTypes: ["violations"] });
    return r.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
      nodes: v.nodes.map((n) => ({ target: n.target.join(" "), summary: n.failureSummary })),
    }));
  }, AXE_TAGS);
  if (res.length === 0) {
    log(`    accessibility: ${name} passes axe-core (${AXE_TAGS.join(", ")})`);
    return;
  }
  const lines = [];
  for (const v of res) {
    lines.push(`${name}: ${v.id} (${v.impact}): ${v.help} ${v.helpUrl}`);
    for (const n of v.nodes) lines.push(`    ${n.target}\n${indent(n.summary)}`);
  }
  a11yFailures.push(...lines);
  log(`    accessibility: ${name} has ${res.length} axe-core violation(s):\n${lines.join("\n")}`);
}

// page is a console page of one person: every page error, console error
// and Content-Security-Policy violation is kept, and fails the run.
const pageProblems = [];
function watch(page, who) {
  page.on("pageerror", (e) => pageProblems.push(`${who} at ${page.url()}: uncaught ${e.message}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const text = m.text();
    if (text.startsWith("Failed to load resource")) return; // the refusals the scenarios ask for
    log(`    [${who} console] ${text}`);
    if (/Content Security Policy|Content-Security-Policy/i.test(text)) pageProblems.push(`${who} at ${page.url()}: ${text}`);
  });
  page.on("dialog", (d) => d.accept()); // a beforeunload prompt lets the tab close
  return page;
}

// focusOrder presses Tab from the top of the page n times and returns
// the accessible names it reached, in order.
async function focusOrder(page, n) {
  await page.evaluate(() => { document.activeElement && document.activeElement.blur && document.activeElement.blur(); window.scrollTo(0, 0); });
  const names = [];
  for (let i = 0; i < n; i++) {
    await page.keyboard.press("Tab");
    names.push(await page.evaluate(() => {
      const el = document.activeElement;
      if (!el || el === document.body) return "";
      const labelled = el.getAttribute("aria-labelledby");
      const name = el.getAttribute("aria-label")
        || (labelled && labelled.split(" ").map((id) => document.getElementById(id)?.textContent || "").join(" "))
        || (el.labels && el.labels.length ? el.labels[0].textContent : "")
        || el.textContent || "";
      return `${el.tagName.toLowerCase()}:${name.trim()}`;
    }));
  }
  return names;
}

// inOrder reports whether want appears within got in this order.
function inOrder(got, want) {
  let i = 0;
  for (const g of got) if (i < want.length && g === want[i]) i++;
  return i === want.length;
}

// login logs a page in with an API token through the login form.
async function login(page, token) {
  await page.goto(base + "/");
  await page.getByLabel("API token", { exact: true }).fill(token);
  await page.getByRole("button", { name: "Log in with token", exact: true }).click();
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "My GPUs", exact: true }).waitFor({ timeout: WAIT.medium });
}

// call makes a request with the page's own fetch (its cookie; the CSRF
// header only when csrf is true, read from the console's session as the
// page reads it) and returns the status and the problem's detail.
async function call(page, method, path, body, csrf) {
  return page.evaluate(async ({ method, path, body, csrf }) => {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (csrf) {
      const s = await (await fetch("/api/v1/console/session", { credentials: "same-origin" })).json();
      headers["X-CSRF-Token"] = s.csrf;
    }
    const r = await fetch(path, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    let json = null;
    try { json = JSON.parse(text); } catch {}
    return { status: r.status, detail: json && json.detail, json, text };
  }, { method, path, body, csrf });
}

// apiAs calls the API from Node with a bearer token, as the CLI does.
async function apiAs(token, method, path) {
  const r = await fetch(base + path, { method, headers: { Authorization: `Bearer ${token}`, Accept: "application/json" } });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, json, text };
}

// The terminal: what window.devgpuTerminal shows, wrapped lines joined.
async function screenText(page) {
  return page.evaluate(() => {
    const t = window.devgpuTerminal;
    if (!t) return "";
    const b = t.buffer.active, out = [];
    for (let i = 0; i < b.length; i++) {
      const l = b.getLine(i);
      if (!l) continue;
      const s = l.translateToString(true);
      if (l.isWrapped && out.length) out[out.length - 1] += s; else out.push(s);
    }
    return out.join("\n");
  });
}

async function termSize(page) {
  return page.evaluate(() => ({ cols: window.devgpuTerminal.cols, rows: window.devgpuTerminal.rows }));
}

// typeLine types a command into the terminal, as a person would, and
// presses Enter.
async function typeLine(page, line) {
  await page.evaluate(() => window.devgpuTerminal.focus());
  await page.keyboard.type(line);
  await page.keyboard.press("Enter");
}

// expectScreen waits until the terminal shows text matching re, and
// returns the match.
async function expectScreen(page, re, what, ms = WAIT.medium) {
  let last = "";
  try {
    return await eventually(what, ms, async () => {
      last = await screenText(page);
      return last.match(re);
    });
  } catch (e) {
    throw new Error(`${e.message}; the terminal shows:\n${indent(last.trimEnd())}`);
  }
}

// foregroundProcess finds a process on this host whose command line is
// argv and that holds its terminal (the group Ctrl-C signals): the
// session's processes are this host's (the local runtime).
function foregroundProcess(argv) {
  const want = argv.join("\0") + "\0";
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, "latin1") !== want) continue;
      const stat = readFileSync(`/proc/${d}/stat`, "latin1");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // state ppid pgrp session tty_nr tpgid
      if (f[0] !== "Z" && f[2] === f[5]) return Number(d);
    } catch { /* gone meanwhile */ }
  }
  return 0;
}

function processAlive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch { return false; }
}

// attacker serves pages of its own origin: / opens the console's
// terminal WebSocket for a session (?target=) and sends a simple
// cross-origin POST, and reports how that went; /go?to=URL sends the tab
// on to URL, as a link or a redirect on any site can.
function attacker() {
  const server = createServer((req, res) => {
    const u = new URL(req.url, "http://x");
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    if (u.pathname === "/go") {
      res.end(`<!doctype html><html lang="en"><title>elsewhere</title><h1>elsewhere</h1><script>
        location.assign(${JSON.stringify(u.searchParams.get("to") || "")});
      </script></html>`);
      return;
    }
    const target = u.searchParams.get("target") || "";
    res.end(`<!doctype html><html lang="en"><title>elsewhere</title><h1>elsewhere</h1><script>
      window.attack = { events: [] };
      const ws = new WebSocket(${JSON.stringify(target)});
      ws.binaryType = "arraybuffer";
      ws.onopen = () => window.attack.events.push("open");
      ws.onmessage = () => window.attack.events.push("message");
      ws.onerror = () => window.attack.events.push("error");
      ws.onclose = (e) => { window.attack.events.push("close " + e.code); window.attack.wsDone = true; };
      // A classic CSRF too: a simple cross-origin POST (no preflight), with
      // the browser's cookies, that would start a session.
      fetch(${JSON.stringify(base)} + "/api/v1/sessions", {
        method: "POST", mode: "no-cors", credentials: "include",
        headers: { "Content-Type": "text/plain" }, body: JSON.stringify({ project: ${JSON.stringify(project)} }),
      }).catch(() => {}).finally(() => { window.attack.postDone = true; });
    </script></html>`);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

// network asks the Go test's proxy to cut its connections ("cut") or to
// let them through again ("resume"), and returns its answer.
async function network(what) {
  const r = await fetch(`${proxyControl}/${what}`, { method: "POST", signal: AbortSignal.timeout(WAIT.short) });
  check(r.ok, `the proxy's ${what} answered ${r.status}`);
  return r.json();
}

// openTerminal presses "Open GPU terminal" in the project's card on My
// GPUs (page), and returns the terminal's page (this tab or a new one)
// once its shell is connected, with its session's id.
async function openTerminal(page, who) {
  const section = page.locator(`section[data-project="${project}"]`);
  const opened = page.context().waitForEvent("page", { timeout: WAIT.medium }).catch(() => null);
  await section.getByRole("button", { name: "Open GPU terminal", exact: true }).click();
  const which = await Promise.race([
    page.waitForFunction(() => document.body.dataset.terminal, null, { timeout: WAIT.medium }).then(() => "same"),
    opened.then((p) => (p ? "new" : null)),
  ]);
  check(which, "pressing Open GPU terminal opened no terminal, in this tab or another");
  const t = which === "new" ? watch(await opened, who) : page;
  await t.waitForFunction(() => document.body.dataset.terminal === "connected" || document.body.dataset.terminal === "ended", null, { timeout: WAIT.long });
  const phase = await t.evaluate(() => document.body.dataset.terminal);
  check(phase === "connected", `the terminal is "${phase}", not connected: ${await t.locator("[role=alert]").allInnerTexts()}`);
  const id = await t.locator("[data-session-id]").first().getAttribute("data-session-id");
  check(/^\S+$/.test(id || ""), `no session id on the terminal page ([data-session-id] is ${JSON.stringify(id)})`);
  return { page: t, id };
}

// phase is the terminal page's connection state (body[data-terminal]).
const phase = (page) => page.evaluate(() => document.body.dataset.terminal);

// count counts the whole lines of text that are exactly line.
function count(text, line) {
  return text.split("\n").filter((l) => l.trimEnd() === line).length;
}

const browser = await chromium.launch({
  executablePath: env.DEVGPU_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
  timeout: WAIT.long,
});
log(`Chromium ${browser.version()} against ${base}`);
const viewport = { width: 1280, height: 800 };
const adminCtx = await browser.newContext({ viewport });
const devCtx = await browser.newContext({ viewport });
for (const c of [adminCtx, devCtx]) c.setDefaultTimeout(WAIT.medium);
// Ctrl+Shift+C and Ctrl+Shift+V use the clipboard API, as a person's
// browser lets them once asked.
await devCtx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
const admin = watch(await adminCtx.newPage(), "admin");
let dev = null, term = null, devLive = null, viaProxy = null;
const more = []; // other pages a scenario opened
const all = () => [admin, dev, term, devLive, viaProxy, ...more];
const projectPath = `/api/v1/projects/${encodeURIComponent(project)}`;
const row = (s) => admin.locator(`tr[data-setting="${s}"]`);

await scenario("login page: keyboard order and accessibility", all, async () => {
  await admin.goto(base + "/");
  await admin.getByLabel("API token", { exact: true }).waitFor();
  await shot(admin, "login");
  await a11y(admin, "login");
  const order = await focusOrder(admin, 6);
  check(inOrder(order, ["input:API token", "button:Log in with token"]),
    `Tab from the top reaches ${JSON.stringify(order)}, want the "API token" field, then the "Log in with token" button`);
});

await scenario("admin logs in with a token", all, async () => {
  await login(admin, adminToken);
  const nav = ["My GPUs", "Usage", "Live sessions", "Projects", "Organisation", "Audit log"];
  const order = await focusOrder(admin, 12);
  check(inOrder(order, nav.map((n) => `a:${n}`)),
    `Tab from the top reaches ${JSON.stringify(order)}, want the main navigation's links in order: ${nav.join(", ")}`);
});

await scenario("admin changes a project's cap and sees its effective value and source", all, async () => {
  await admin.getByRole("link", { name: "Projects", exact: true }).click();
  await admin.getByRole("link", { name: project, exact: true }).first().waitFor();
  await shot(admin, "projects");
  await a11y(admin, "projects");
  await admin.getByRole("link", { name: project, exact: true }).first().click();
  await row("max_gpus").waitFor();
  const before = (await row("max_gpus").locator(".source").innerText()).trim();
  check(before !== "project", `max_gpus's source is "project" before the change; the test wants it inherited first`);
  await row("max_gpus").getByLabel("New value for max_gpus", { exact: true }).fill(newCap);
  await row("max_gpus").getByRole("button", { name: "Save max_gpus", exact: true }).click();
  await eventually(`max_gpus to show ${newCap} from the project`, WAIT.medium, async () =>
    (await row("max_gpus").locator(".effective").innerText()).trim() === newCap &&
    (await row("max_gpus").locator(".source").innerText()).trim() === "project");
  // The page's word is the server's: a reload shows the same.
  await admin.reload();
  await row("max_gpus").waitFor();
  const eff = (await row("max_gpus").locator(".effective").innerText()).trim();
  const src = (await row("max_gpus").locator(".source").innerText()).trim();
  check(eff === newCap && src === "project", `after a reload max_gpus shows ${eff} from ${src}, want ${newCap} from project`);
  await row("max_gpus").getByRole("button", { name: "Inherit max_gpus", exact: true }).waitFor();
  check(await row("max_gpus").getByRole("button", { name: "Inherit max_gpus", exact: true }).isEnabled(), "the project's own max_gpus cannot be made to inherit again");
  await shot(admin, "project");
  await a11y(admin, "project");
});

await scenario("a locked setting cannot be changed", all, async () => {
  const r = row(lockedSetting);
  await r.waitFor();
  const input = r.getByLabel(`New value for ${lockedSetting}`, { exact: true });
  const save = r.getByRole("button", { name: `Save ${lockedSetting}`, exact: true });
  check(await input.isDisabled(), `the editor of the locked ${lockedSetting} is enabled`);
  check(await save.isDisabled(), `the Save button of the locked ${lockedSetting} is enabled`);
  const source = (await r.locator(".source").innerText()).trim();
  check(/locked/i.test(source), `the locked ${lockedSetting}'s source says "${source}", not that it is locked`);
  // Forced past the disabled editor, with the page's own fetch and its
  // CSRF token: the server refuses it with its sentence.
  const got = await call(admin, "PATCH", projectPath, { settings: { [lockedSetting]: 1 } }, true);
  check(got.status === 403 && got.detail === lockedRefusal,
    `a forced PATCH of ${lockedSetting} answered ${got.status} ${JSON.stringify(got.detail || got.text)}, want 403 "${lockedRefusal}"`);
});

await scenario("CSRF: an admin's change without the CSRF header is refused", all, async () => {
  for (const [what, headers] of [["no X-CSRF-Token", {}], ["a wrong X-CSRF-Token", { "X-CSRF-Token": "forged" }]]) {
    const got = await admin.evaluate(async ({ path, headers, forged }) => {
      const r = await fetch(path, { method: "PATCH", credentials: "same-origin", headers: { "Content-Type": "application/json", ...headers }, body: JSON.stringify({ settings: { max_gpus: forged } }) });
      return { status: r.status, text: await r.text() };
    }, { path: projectPath, headers, forged: Number(newCap) + 1 });
    check(got.status === 403, `a PATCH with ${what} answered ${got.status} ${got.text}, want 403`);
  }
  const p = await call(admin, "GET", projectPath);
  check(p.status === 200 && String(p.json.effective.max_gpus.value) === newCap,
    `after the refused PATCHes max_gpus is ${JSON.stringify(p.json && p.json.effective.max_gpus)}, want ${newCap} unchanged`);
});

await scenario("admin pages: organisation, usage, audit", all, async () => {
  // Each page is screenshotted and checked once its data is there.
  await admin.getByRole("link", { name: "Organisation", exact: true }).click();
  await admin.getByRole("table", { name: "Defaults for every project", exact: true }).waitFor();
  await admin.getByRole("table", { name: "Quotas per GPU type and region", exact: true }).waitFor();
  await admin.locator("main").getByText(lockedSetting).first().waitFor();
  await shot(admin, "organisation");
  await a11y(admin, "organisation");
  await admin.getByRole("link", { name: "Usage", exact: true }).click();
  const table = admin.getByRole("table", { name: "Usage by day", exact: true });
  await table.waitFor();
  // The chart beside the table, unless nothing was used; and the budgets.
  await eventually("the usage chart, or the table saying there was no use", WAIT.medium, async () =>
    (await admin.locator("main svg.chart[role=img]").count()) > 0 || (await table.getByText("No GPU use in this period.").count()) > 0);
  await eventually("the budgets, read", WAIT.medium, async () =>
    (await admin.locator("main li[data-budget]").count()) > 0 || (await admin.locator("main").getByText("None of your projects has a budget.").count()) > 0);
  await shot(admin, "usage");
  await a11y(admin, "usage");
});

// The developer.
dev = watch(await devCtx.newPage(), "developer");
let sessionID = "";

await scenario("developer opens a GPU terminal from My GPUs", all, async () => {
  await login(dev, devToken);
  const section = dev.locator(`section[data-project="${project}"]`);
  await section.waitFor();
  await section.getByLabel("GPU type", { exact: true }).selectOption(gpuType);
  await shot(dev, "my-gpus");
  await a11y(dev, "my-gpus");
  // The terminal may open in this tab or in a new one.
  ({ page: term, id: sessionID } = await openTerminal(dev, "developer terminal"));
  result.session = sessionID;
  log(`    session ${sessionID}`);
});

await scenario("the terminal has the session's GPU", all, async () => {
  check(sessionID, "no terminal is open");
  const s = await apiAs(devToken, "GET", `/api/v1/sessions/${sessionID}`);
  check(s.status === 200 && s.json.gpus.length === 1, `the session is ${s.status} ${s.text}, want one GPU`);
  await typeLine(term, "echo gpu=[$CUDA_VISIBLE_DEVICES]");
  await expectScreen(term, new RegExp(`gpu=\\[${s.json.gpus[0].replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\]`), `the terminal to show gpu=[${s.json.gpus[0]}]`);
});

await scenario("resizing the window resizes the shell's terminal", all, async () => {
  check(sessionID, "no terminal is open");
  let n = 0;
  // sizeSeen asks the shell its size until it says want (the new size
  // reaches it asynchronously: a resize message, then SIGWINCH).
  const sizeSeen = (want) => eventually(`stty size to say ${want.rows} ${want.cols}`, WAIT.medium, async () => {
    n++;
    await typeLine(term, `stty size; echo SI''ZED${n}`);
    const m = await expectScreen(term, new RegExp(`(\\d+) (\\d+)\\s*\\nSIZED${n}\\b`), `the answer to stty size #${n}`);
    return Number(m[1]) === want.rows && Number(m[2]) === want.cols;
  });
  const before = await termSize(term);
  await sizeSeen(before);
  await term.setViewportSize({ width: 900, height: 560 });
  const after = await eventually("the terminal to fit the smaller window", WAIT.medium, async () => {
    const s = await termSize(term);
    return s.cols < before.cols && s.rows < before.rows ? s : null;
  });
  await sizeSeen(after);
  log(`    ${before.cols}x${before.rows} -> ${after.cols}x${after.rows}, and stty size follows`);
  await term.setViewportSize(viewport);
  const back = await eventually("the terminal to fit the window again", WAIT.medium, async () => {
    const s = await termSize(term);
    return s.cols === before.cols && s.rows === before.rows ? s : null;
  });
  await sizeSeen(back);
});

await scenario("Ctrl-C interrupts sleep 100", all, async () => {
  check(sessionID, "no terminal is open");
  const secs = `100.${process.pid}${Date.now() % 1000}`; // sleeps 100 s; unique on this host
  await typeLine(term, `sleep ${secs}`);
  const pid = await eventually(`sleep ${secs} to be the terminal's foreground job`, WAIT.medium, async () => foregroundProcess(["sleep", secs]));
  await term.evaluate(() => window.devgpuTerminal.focus());
  await term.keyboard.press("Control+C");
  // The prompt comes back (well before the 100 s), and the shell says
  // the sleep died of SIGINT (128 + 2).
  await eventually(`sleep (pid ${pid}) to end after Ctrl-C`, WAIT.medium, async () => !processAlive(pid));
  await expectScreen(term, new RegExp(`sleep ${secs.replace(".", "\\.")}[^]*\\n[^\\n]*[#$]\\s*$`), "the prompt back after Ctrl-C", WAIT.medium);
  await typeLine(term, "echo status-$?");
  await expectScreen(term, /status-130/, "the shell to report the interrupted sleep's status 130", WAIT.medium);
  await shot(term, "terminal");
  await a11y(term, "terminal");
});

await scenario("Ctrl+Shift+C copies the terminal's selection and Ctrl+Shift+V pastes it", all, async () => {
  check(sessionID, "no terminal is open");
  const word = `copy-me-${process.pid}-${Date.now() % 100000}`;
  await typeLine(term, `echo ${word.slice(0, 4)}''${word.slice(4)}`);
  await expectScreen(term, new RegExp(`^${word}$`, "m"), `the terminal to show ${word}`);
  // The clipboard holds something else first.
  await term.evaluate(() => navigator.clipboard.writeText("not the selection"));
  // The word is selected as a person selects it: a double-click on it.
  const row = await term.evaluate((word) => {
    const b = window.devgpuTerminal.buffer.active;
    for (let y = b.length - 1; y >= 0; y--) if (b.getLine(y)?.translateToString(true) === word) return y - b.viewportY;
    return -1;
  }, word);
  const { cols, rows } = await termSize(term);
  check(row >= 0 && row < rows, `${word} is not on the terminal's screen (row ${row})`);
  const box = await term.locator(".xterm-screen").boundingBox();
  await term.mouse.dblclick(box.x + 2.5 * (box.width / cols), box.y + (row + 0.5) * (box.height / rows));
  await eventually(`a double-click to select ${word}`, WAIT.short, async () => (await term.evaluate(() => window.devgpuTerminal.getSelection())) === word);
  await term.keyboard.press("Control+Shift+C");
  let clip = "";
  await eventually(`Ctrl+Shift+C to put ${word} on the clipboard`, WAIT.short, async () => (clip = await term.evaluate(() => navigator.clipboard.readText())) === word)
    .catch((e) => { throw new Error(`${e.message}; the clipboard holds ${JSON.stringify(clip)}`); });
  await term.evaluate(() => window.devgpuTerminal.focus());
  await term.keyboard.type("echo pasted:");
  await term.keyboard.press("Control+Shift+V");
  await expectScreen(term, new RegExp(`echo pasted:${word}\\s*$`), `Ctrl+Shift+V to paste ${word} onto the command line`);
  await term.keyboard.press("Enter");
  await expectScreen(term, new RegExp(`^pasted:${word}$`, "m"), `the shell to echo the pasted ${word}`);
  // Ctrl+Shift+C reached no shell as Ctrl-C: the command line was not
  // interrupted, and the session still runs.
  const s = await apiAs(devToken, "GET", `/api/v1/sessions/${sessionID}`);
  check(s.status === 200 && s.json.state === "running", `after copy and paste the session is ${s.text}, want running`);
});

await scenario("a developer cannot see another user's session", all, async () => {
  check(sessionID, "no terminal is open");
  devLive = watch(await devCtx.newPage(), "developer live");
  await devLive.goto(base + "/#/admin/sessions");
  await devLive.locator(`tr[data-session="${sessionID}"]`).waitFor({ timeout: WAIT.medium });
  check(await devLive.locator(`tr[data-session="${otherSession}"]`).count() === 0, `the live view shows ${otherSession}, another user's session`);
  check(!(await devLive.locator("main").innerText()).includes(otherSession), `the live view names ${otherSession}, another user's session`);
  const got = await call(devLive, "GET", `/api/v1/sessions/${otherSession}`);
  check(got.status === 404, `GET /api/v1/sessions/${otherSession} (another user's) answered ${got.status} ${got.text}, want 404`);
  const list = await call(devLive, "GET", "/api/v1/sessions");
  check(list.status === 200 && list.text.includes(sessionID) && !list.text.includes(otherSession), `the developer's session list: ${list.status} ${list.text}, want theirs without ${otherSession}`);
  const everyone = await call(devLive, "GET", "/api/v1/sessions?all=true");
  check(everyone.status === 403 && !everyone.text.includes(otherSession), `everyone's sessions, asked by a developer: ${everyone.status} ${everyone.text}, want 403`);
  const stop = await call(devLive, "DELETE", `/api/v1/sessions/${otherSession}`, undefined, true);
  check(stop.status === 404, `DELETE of another user's session answered ${stop.status} ${stop.text}, want 404`);
});

await scenario("a cross-origin WebSocket to the terminal, and a cross-origin POST, are refused", all, async () => {
  check(sessionID, "no terminal is open");
  const before = await apiAs(devToken, "GET", `/api/v1/sessions/${sessionID}`);
  const mineBefore = await apiAs(devToken, "GET", "/api/v1/sessions");
  const server = await attacker();
  const port = server.address().port;
  const target = `${base.replace(/^http/, "ws")}/api/v1/sessions/${encodeURIComponent(sessionID)}/terminal?cols=80&rows=24`;
  try {
    // Another port on the same host is the same site (the console's
    // SameSite=Lax cookie goes along) but another origin: only the
    // server's Origin check stands in the way. localhost is another site.
    //
    // The refusal must be the server's answer to the handshake, which only
    // Chromium's console tells (a page sees close 1006 for any failure):
    // 403 from the same site, whose request carries the cookie; from
    // another site the SameSite cookie stays home, and the server answers
    // 401 ("HTTP Authentication failed" in Chromium's words).
    const refusals = {
      [`http://127.0.0.1:${port}`]: [/Unexpected response code: 403/, "403"],
      [`http://localhost:${port}`]: [/Unexpected response code: 401|HTTP Authentication failed/, "401"],
    };
    for (const [origin, [refused, status]] of Object.entries(refusals)) {
      const p = watch(await devCtx.newPage(), "attacker");
      const said = [];
      p.on("console", (m) => said.push(m.text()));
      await p.goto(`${origin}/?target=${encodeURIComponent(target)}`);
      const events = await p.waitForFunction(() => window.attack && window.attack.wsDone && window.attack.postDone && window.attack.events, null, { timeout: WAIT.medium }).then((h) => h.jsonValue());
      check(!events.includes("open") && !events.includes("message"), `a page at ${origin} opened the terminal's WebSocket: ${events.join(", ")}`);
      const why = await eventually(`Chromium to say why the WebSocket from ${origin} failed`, WAIT.short, async () => said.find((t) => t.includes("WebSocket connection to")))
        .catch(() => `(nothing; the page's console said ${JSON.stringify(said)})`);
      await p.close();
      check(refused.test(why), `from ${origin} the terminal's WebSocket failed with "${why}", want the server's ${status}`);
      log(`    from ${origin}: ${events.join(", ")}: the server answered ${status}`);
    }
  } finally {
    server.close();
  }
  const after = await apiAs(devToken, "GET", `/api/v1/sessions/${sessionID}`);
  check(after.json.attachments === before.json.attachments,
    `the session's attachments went from ${before.json.attachments} to ${after.json.attachments} after the cross-origin attempts`);
  const ids = (r) => (r.json || []).map((s) => s.id).sort().join(" ");
  const mine = await apiAs(devToken, "GET", "/api/v1/sessions");
  check(mine.status === 200 && ids(mine) === ids(mineBefore) && ids(mine).includes(sessionID),
    `after the cross-origin POSTs the developer has sessions ${ids(mine)}, want ${ids(mineBefore)} as before`);
});

await scenario("CSRF: a developer's stop without the CSRF header is refused", all, async () => {
  check(sessionID, "no terminal is open");
  const got = await devLive.evaluate(async (path) => {
    const r = await fetch(path, { method: "DELETE", credentials: "same-origin" });
    return { status: r.status, text: await r.text() };
  }, `/api/v1/sessions/${sessionID}`);
  check(got.status === 403, `a DELETE without X-CSRF-Token answered ${got.status} ${got.text}, want 403`);
  const s = await apiAs(devToken, "GET", `/api/v1/sessions/${sessionID}`);
  check(s.status === 200 && s.json.state === "running", `after the refused DELETE the session is ${s.json && s.json.state}, want running`);
  check((await term.evaluate(() => document.body.dataset.terminal)) === "connected", "the terminal is no longer connected after a refused DELETE");
});

await scenario("the console's cookie cannot mint an API token", all, async () => {
  const name = "from-the-browser";
  const got = await call(devLive, "POST", "/api/v1/tokens", { name }, true);
  check(got.status === 403 && got.detail, `POST /api/v1/tokens with the console's cookie and its CSRF token answered ${got.status} ${got.text}, want 403 with a sentence`);
  // Refused for what it is, not for a CSRF token this page lacked.
  check(!/CSRF/i.test(got.detail), `POST /api/v1/tokens was refused for its CSRF token ("${got.detail}"), not for coming from the console's cookie`);
  log(`    refused: ${got.detail}`);
  const tokens = await apiAs(devToken, "GET", "/api/v1/tokens");
  check(tokens.status === 200 && !tokens.text.includes(name), `after the refused POST the developer's tokens are ${tokens.status} ${tokens.text}, want none named ${name}`);
});

await scenario("admin live sessions and audit log", all, async () => {
  await admin.getByRole("link", { name: "Live sessions", exact: true }).click();
  for (const id of [sessionID, otherSession].filter(Boolean)) await admin.locator(`tr[data-session="${id}"]`).waitFor({ timeout: WAIT.medium });
  await admin.getByRole("button", { name: `Stop session ${otherSession}`, exact: true }).waitFor();
  await shot(admin, "live-sessions");
  await a11y(admin, "live-sessions");
  await admin.getByRole("link", { name: "Audit log", exact: true }).click();
  await admin.getByRole("heading", { level: 1 }).waitFor();
  await admin.locator("main").getByText("project.update").first().waitFor();
  await shot(admin, "audit");
  await a11y(admin, "audit");
});

await scenario("closing the tab ends the session closed", all, async () => {
  check(sessionID && term && !term.isClosed(), "no terminal is open");
  const closed = term.waitForEvent("close", { timeout: WAIT.medium });
  await term.close({ runBeforeUnload: true });
  await closed;
  const s = await eventually(`session ${sessionID} to end`, WAIT.long, async () => {
    const r = await apiAs(devToken, "GET", `/api/v1/sessions/${sessionID}`);
    return r.status === 200 && r.json.state === "ended" ? r.json : null;
  });
  check(s.end_reason === "closed", `the session ended ${s.end_reason}, want closed`);
});

await scenario("a link from another site starts no session and opens no shell", all, async () => {
  // The attack must be able to succeed but for the console: the developer
  // can still start a session, and has a running session with no shell.
  const standing = await apiAs(devToken, "GET", "/api/v1/standing");
  const card = (standing.json || []).find((p) => p.project === project);
  check(card && card.can_start >= 1, `the developer can start nothing in ${project} (${standing.text}), so the attack could start nothing either way`);
  const sessions = async () => {
    const r = await apiAs(devToken, "GET", "/api/v1/sessions");
    check(r.status === 200, `the developer's sessions: ${r.status} ${r.text}`);
    return r.json.map((s) => s.id).sort();
  };
  const detached = async () => (await apiAs(devToken, "GET", `/api/v1/sessions/${detachedSession}`)).json;
  const before = await sessions();
  const d = await detached();
  check(d && d.state === "running" && d.attachments === 0, `the developer's detached session ${detachedSession} is ${JSON.stringify(d)}, want running with no shell`);

  const server = await attacker();
  const port = server.address().port;
  const start = `${base}/#/terminal?${new URLSearchParams({ project, gpu_type: gpuType })}`;
  const open = `${base}/#/terminal/${encodeURIComponent(detachedSession)}`;
  // localhost is another site (the console's SameSite=Lax cookie goes
  // along with a top-level navigation all the same); another port of
  // 127.0.0.1 is the same site but another origin.
  const attacks = [
    [`http://localhost:${port}`, start, "Start session"],
    [`http://127.0.0.1:${port}`, start, "Start session"],
    [`http://localhost:${port}`, open, "Open shell"],
  ];
  const problems = [];
  let shown = false;
  try {
    for (const [i, [origin, url, button]] of attacks.entries()) {
      const p = watch(await devCtx.newPage(), "sent by another site");
      more.push(p);
      // What the console did on its own: a start, or a terminal's socket.
      const did = [];
      p.on("request", (r) => { if (r.method() === "POST" && r.url().startsWith(base) && new URL(r.url()).pathname === "/api/v1/sessions") did.push(`POST ${r.url()}`); });
      p.on("websocket", (ws) => did.push(`WebSocket ${ws.url()}`));
      await p.goto(`${origin}/go?${new URLSearchParams({ to: url })}`, { waitUntil: "commit" });
      let outcome;
      try {
        outcome = await eventually(`the console, sent from ${origin} to ${url}, to ask first ("${button}")`, WAIT.medium, async () => {
          if (did.length) return "acted";
          if (!p.url().startsWith(base + "/")) return null;
          return (await p.getByRole("button", { name: button, exact: true }).isVisible()) ? "asked" : null;
        });
      } catch (e) {
        problems.push(e.message);
      }
      if (outcome !== "asked" || did.length) {
        if (outcome) problems.push(`sent from ${origin} to ${url}, the console did not ask first: ${did.join("; ")}`);
        await evidence(p, `link-from-another-site-${i}`);
        continue;
      }
      log(`    from ${origin} to ${url}: the console asks ("${button}") and does nothing`);
      if (!shown) {
        shown = true;
        await shot(p, "terminal-confirm");
        await a11y(p, "terminal-confirm");
      }
    }
  } finally {
    server.close();
    for (const p of more.splice(0)) if (!p.isClosed()) await p.close({ runBeforeUnload: true });
  }
  // Seen from the server: no session started, no shell opened.
  const after = await sessions();
  const d2 = await detached();
  if (after.join(" ") !== before.join(" ")) problems.push(`the developer's sessions went from ${before.join(" ")} to ${after.join(" ")}`);
  if (!d2 || d2.attachments !== 0 || d2.state !== "running") problems.push(`the detached session ${detachedSession} is now ${JSON.stringify(d2)}, want running with no shell`);
  // Sessions another site started must not hold GPUs the next scenarios need.
  for (const id of after.filter((id) => !before.includes(id))) await apiAs(devToken, "DELETE", `/api/v1/sessions/${encodeURIComponent(id)}`);
  check(problems.length === 0, problems.join("\n"));
});

await scenario("from a bare address the terminal opens once the person asks", all, async () => {
  // The address typed or pasted, as a person may: the console asks, and
  // its button opens the shell.
  const p = watch(await devCtx.newPage(), "developer at a bare address");
  more.push(p);
  await p.goto(`${base}/#/terminal/${encodeURIComponent(detachedSession)}`);
  await p.getByRole("button", { name: "Open shell", exact: true }).click();
  await p.waitForFunction(() => document.body.dataset.terminal === "connected" || document.body.dataset.terminal === "ended", null, { timeout: WAIT.long });
  check((await phase(p)) === "connected", `after "Open shell" the terminal is "${await phase(p)}", not connected: ${await p.locator("[role=alert]").allInnerTexts()}`);
  const d = await eventually(`session ${detachedSession} to count the shell`, WAIT.medium, async () => {
    const r = await apiAs(devToken, "GET", `/api/v1/sessions/${detachedSession}`);
    return r.status === 200 && r.json.attachments === 1 ? r.json : null;
  });
  check(d.state === "running", `session ${detachedSession} is ${d.state}, want running`);
  await typeLine(p, "echo op''ened");
  await expectScreen(p, /^opened$/m, "the shell to echo opened");
  // Its only shell closes with the tab: the session ends closed.
  await p.close({ runBeforeUnload: true });
  more.splice(more.indexOf(p), 1);
  const s = await eventually(`session ${detachedSession} to end`, WAIT.long, async () => {
    const r = await apiAs(devToken, "GET", `/api/v1/sessions/${detachedSession}`);
    return r.status === 200 && r.json.state === "ended" ? r.json : null;
  });
  check(s.end_reason === "closed", `session ${detachedSession} ended ${s.end_reason}, want closed`);
});

// The developer's browser reaches the server through the Go test's proxy:
// a terminal opened there loses its connection (the proxy cuts it) and
// gets it back (the proxy lets connections through again).
let reconnectID = "";

await scenario("after a network cut the terminal reconnects to the same shell", all, async () => {
  viaProxy = watch(await devCtx.newPage(), "developer via the proxy");
  await viaProxy.goto(proxyURL + "/#/");
  await viaProxy.getByRole("heading", { name: "My GPUs", level: 1 }).waitFor();
  await viaProxy.locator(`section[data-project="${project}"]`).getByLabel("GPU type", { exact: true }).selectOption(gpuType);
  const opened = await openTerminal(viaProxy, "developer terminal via the proxy");
  viaProxy = opened.page;
  reconnectID = result.reconnect = opened.id;
  const t = viaProxy;
  log(`    session ${reconnectID} through ${proxyURL}`);
  const shellPid = async (n) => {
    await typeLine(t, `echo sh''ell${n}=$$`);
    return (await expectScreen(t, new RegExp(`^shell${n}=(\\d+)$`, "m"), `the shell's pid (#${n})`))[1];
  };
  const pid = await shellPid(1);
  await typeLine(t, "echo be''fore");
  await expectScreen(t, /^before$/m, "the shell to echo before");

  // A command that prints once the network is down: a sleep (ended by
  // this script meanwhile), an echo, then awk reading one line.
  const u = `${process.pid}${Date.now() % 1000}`;
  const secs = `100.${u}`;
  const awk = `NR == 1 { print "typed:" $0; exit } # ${u}`;
  await typeLine(t, `sleep ${secs}; echo af''ter-the-cut; awk '${awk}'`);
  const sleeper = await eventually(`sleep ${secs} to be the terminal's foreground job`, WAIT.medium, async () => foregroundProcess(["sleep", secs]));

  const cut = await network("cut");
  check(cut.cut >= 1, "the proxy had no connection to cut: the terminal's socket does not go through it");
  await t.waitForFunction(() => document.body.dataset.terminal === "reconnecting", null, { timeout: WAIT.medium });
  await eventually("the status line to say reconnecting", WAIT.short, async () => /reconnecting/i.test(await t.getByRole("status").innerText()));
  await shot(t, "terminal-reconnecting", false);
  // While it is down the command goes on and prints.
  process.kill(sleeper, "SIGTERM");
  await eventually("awk to wait for its line, after the echo", WAIT.medium, async () => foregroundProcess(["awk", awk]));
  // Keys typed while it is down.
  await t.evaluate(() => window.devgpuTerminal.focus());
  await t.keyboard.type("typed-while-cut");
  await t.keyboard.press("Enter");
  const during = await screenText(t);
  check((await phase(t)) === "reconnecting", `the terminal is "${await phase(t)}" while the network is down, want reconnecting`);
  check(count(during, "after-the-cut") === 0, "the terminal shows output printed while the network was down before it is back");

  await network("resume");
  await t.waitForFunction(() => document.body.dataset.terminal === "connected", null, { timeout: WAIT.long });
  await eventually("the status line to say connected", WAIT.short, async () => /connected/i.test(await t.getByRole("status").innerText()));
  await expectScreen(t, /^typed:typed-while-cut$/m, "awk to print the line typed while the network was down");
  const again = await shellPid(2);
  check(again === pid, `the shell after the cut is pid ${again}, before it ${pid}: not the same shell`);
  const text = await screenText(t);
  for (const line of ["before", "after-the-cut", "typed:typed-while-cut"]) {
    const n = count(text, line);
    check(n === 1, `the terminal shows "${line}" ${n} times, want once:\n${indent(text.trimEnd())}`);
  }
  // One shell, the same session all along.
  const s = await eventually(`session ${reconnectID} to count one shell`, WAIT.medium, async () => {
    const r = await apiAs(devToken, "GET", `/api/v1/sessions/${reconnectID}`);
    return r.status === 200 && r.json.attachments === 1 ? r.json : null;
  });
  check(s.state === "running" && !s.ended_at, `after the reconnect session ${reconnectID} is ${s.state}, ended ${s.ended_at}, want running`);
});

await scenario("End session closes the terminal and ends the session closed", all, async () => {
  check(reconnectID && viaProxy && !viaProxy.isClosed(), "no terminal is open through the proxy");
  await viaProxy.getByRole("button", { name: "End session", exact: true }).click();
  await viaProxy.waitForFunction(() => document.body.dataset.terminal === "ended", null, { timeout: WAIT.medium });
  const s = await eventually(`session ${reconnectID} to end`, WAIT.long, async () => {
    const r = await apiAs(devToken, "GET", `/api/v1/sessions/${reconnectID}`);
    return r.status === 200 && r.json.state === "ended" ? r.json : null;
  });
  check(s.end_reason === "closed", `the session ended ${s.end_reason}, want closed`);
  await eventually("the page to say the session ended closed", WAIT.medium, async () =>
    /ended \(closed\)/.test(await viaProxy.locator("[data-session-state]").innerText()));
  await shot(viaProxy, "terminal-ended", false);
  await a11y(viaProxy, "terminal-ended");
});

await scenario("no page error or Content-Security-Policy violation", all, async () => {
  check(pageProblems.length === 0, `pages reported:\n${pageProblems.join("\n")}`);
});

await scenario("every page passes the accessibility check", all, async () => {
  const want = ["login", "my-gpus", "terminal", "usage", "live-sessions", "projects", "project", "organisation", "audit"];
  const missing = want.filter((n) => !shots.has(n));
  check(a11yFailures.length === 0, `axe-core found violations:\n${a11yFailures.join("\n")}`);
  check(missing.length === 0, `pages not reached, so not checked: ${missing.join(", ")}`);
});

await browser.close();
if (resultFile) writeFileSync(resultFile, JSON.stringify(result, null, 2));
log("");
for (const [name, r] of Object.entries(result.scenarios)) log(`${r === "pass" ? "pass" : "FAIL"}  ${name}`);
if (failures.length) {
  console.error(`\n${failures.length} console scenario(s) failed:\n${failures.map((f) => "  " + f).join("\n")}`);
  process.exit(1);
}
