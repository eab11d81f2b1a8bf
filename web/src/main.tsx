// The console's entry: find the browser's login, then show the page the
// location names inside the shared layout.
import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import "./style.css";
import { session, api, ApiError } from "./api";
import { leaveThen, match, navigate, useLocation } from "./router";
import { routes, type Route } from "./routes";
import { LoginPage } from "./pages/login";
import { setTitle } from "./components/title";
import type { ConsoleSession } from "./types";

function App() {
  const [me, setMe] = useState<ConsoleSession | null | undefined>(undefined);
  const [err, setErr] = useState("");
  useEffect(() => { session().then(setMe, (e) => setErr(String(e.message || e))); }, []);
  // The login could not be read (the server failed, or cannot be
  // reached): say so, and offer the login page, which says how to go on.
  if (err) return <LoginPage problem={err} />;
  if (me === undefined) return <main id="main" aria-busy="true"><p>Loading…</p></main>;
  if (me === null) return <LoginPage />;
  return <Shell me={me} />;
}

function visible(r: Route, me: ConsoleSession): boolean {
  if (!r.nav) return false;
  if (r.admin === "org") return me.org_admin;
  if (r.admin === "project") return me.org_admin || (me.projects || []).some((p) => p.role === "admin");
  return true;
}

function Shell({ me }: { me: ConsoleSession }) {
  const loc = useLocation();
  const main = useRef<HTMLElement>(null);
  const first = useRef(true);
  const [logoutErr, setLogoutErr] = useState("");
  // A login page address (a sign-in that failed in another tab, a
  // bookmark) means nothing once logged in: go home.
  useEffect(() => { if (loc.path === "/login") navigate("/"); }, [loc.path]);
  let page = null;
  let title = "Not found";
  for (const r of routes) {
    const params = match(r.pattern, loc.path);
    if (params) { const P = r.page; page = <P me={me} params={params} query={loc.query} />; title = r.title(params); break; }
  }
  // Each visit names its page in the window's title, and, unless the page
  // put the focus somewhere of its own (the terminal takes it), moves the
  // focus to its heading, so that a screen reader reads the new page from
  // its top and Tab goes on from there.
  useEffect(() => {
    setTitle(title);
    if (first.current) { first.current = false; return; }
    const m = main.current;
    const a = document.activeElement;
    if (!m || (a && a !== m && m.contains(a))) return;
    const h = m.querySelector("h1");
    if (!h) return;
    if (!h.hasAttribute("tabindex")) h.setAttribute("tabindex", "-1");
    h.focus();
  }, [loc]);
  if (!page) page = <><h1>Not found</h1><p>No page is at this address; pick one from the navigation.</p></>;
  // Logging out leaves the page: a terminal asks first, and ends its
  // shell, before the login goes.
  const logout = () => leaveThen(async () => {
    setLogoutErr("");
    try {
      await api("POST", "/api/v1/console/logout");
    } catch (e) {
      const why = e instanceof ApiError ? e.message : String(e);
      setLogoutErr(`Logging out failed, and this browser is still logged in: ${why}`);
      return;
    }
    location.assign("/");
  });
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); e.stopPropagation(); main.current?.focus(); }}>Skip to content</a>
      <header class="top">
        <span class="brand">devgpu</span>
        <nav aria-label="Main">
          <ul>
            {routes.filter((r) => visible(r, me)).map((r) => (
              <li><a href={"#" + r.pattern} aria-current={match(r.pattern, loc.path) ? "page" : undefined}>{r.nav}</a></li>
            ))}
          </ul>
        </nav>
        <span class="who">{me.user}{me.org_admin ? " (organisation admin)" : ""}</span>
        <button type="button" onClick={logout}>Log out</button>
      </header>
      {logoutErr && <p class="error banner" role="alert">{logoutErr}</p>}
      <main id="main" ref={main} tabIndex={-1}>{page}</main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
