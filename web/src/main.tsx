// The console's entry: find the browser's login, then show the page the
// location names inside the shared layout.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./style.css";
import { session, api } from "./api";
import { match, navigate, useLocation } from "./router";
import { routes, type Route } from "./routes";
import { LoginPage } from "./pages/login";
import type { ConsoleSession } from "./types";

function App() {
  const [me, setMe] = useState<ConsoleSession | null | undefined>(undefined);
  const [err, setErr] = useState("");
  useEffect(() => { session().then(setMe, (e) => setErr(String(e.message || e))); }, []);
  if (err) return <main id="main"><p role="alert">{err}</p></main>;
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
  // A login page address (a sign-in that failed in another tab, a
  // bookmark) means nothing once logged in: go home.
  useEffect(() => { if (loc.path === "/login") navigate("/"); }, [loc.path]);
  let page = null;
  for (const r of routes) {
    const params = match(r.pattern, loc.path);
    if (params) { const P = r.page; page = <P me={me} params={params} query={loc.query} />; break; }
  }
  if (!page) page = <><h1>Not found</h1><p>No page is at this address; pick one from the navigation.</p></>;
  const logout = async () => {
    await api("POST", "/api/v1/console/logout").catch(() => {});
    location.assign("/");
  };
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>Skip to content</a>
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
      <main id="main" tabIndex={-1}>{page}</main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
