// Hash routes (#/admin/projects/ml): the server serves one page, and a
// reload or a shared link lands on the same view.
//
// One location is shown at a time; every way of changing it passes here:
// a link or the address bar (hashchange), back and forward (hashchange),
// and the page's own navigate, which may carry history state that only
// this page can set (the terminal's start intent, terminal/intent.ts). A
// page may guard leaving it (guardLeaving): the terminal asks before its
// shell ends.
import { useEffect, useState } from "preact/hooks";

export interface Location { path: string; query: URLSearchParams }

export function currentLocation(): Location {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, q] = raw.split("?", 2);
  return { path: path || "/", query: new URLSearchParams(q || "") };
}

// A guard hears each in-app navigation away from the page before it
// happens. It returns true to let it go on, or false to hold it; go
// makes a held navigation happen later (once the user agreed), without
// asking the guard again.
export type Guard = (go: () => void) => boolean;

let guard: Guard | null = null;
let shown = location.href; // the address the page shows
let shownState: unknown = history.state;
const watchers = new Set<(l: Location) => void>();

// guardLeaving sets the guard until the returned function is called.
export function guardLeaving(g: Guard): () => void {
  guard = g;
  return () => { if (guard === g) guard = null; };
}

// show makes the current address the one shown: every useLocation hears
// a new Location (a new query object per visit, even to the same address).
function show() {
  shown = location.href;
  shownState = history.state;
  const l = currentLocation();
  for (const w of watchers) w(l);
}

// push shows to as a new history entry with state (the same address
// again, without state, replaces its entry: a visit, not a step back).
function push(to: string, state: unknown) {
  const url = new URL("#" + to, location.href).href;
  if (url === location.href && state === null) history.replaceState(null, "", url);
  else history.pushState(state, "", url);
  show();
}

// ask lets the guard hold a navigation; go is how to make it later.
function ask(go: () => void): boolean {
  const g = guard;
  if (!g) return true;
  return g(() => { if (guard === g) guard = null; go(); });
}

addEventListener("hashchange", () => {
  if (location.href === shown) return;
  const to = location.hash.replace(/^#/, "");
  if (!ask(() => push(to, null))) {
    // Held: show the address of the page that stays.
    history.replaceState(shownState, "", shown);
    return;
  }
  show();
});

// A guarded page's links go through navigate, so that a held one leaves
// no history entry behind.
addEventListener("click", (ev) => {
  if (!guard || ev.defaultPrevented || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return;
  const a = (ev.target as Element | null)?.closest?.("a[href^='#/']") as HTMLAnchorElement | null;
  if (!a || (a.target && a.target !== "_self") || a.hasAttribute("download")) return;
  ev.preventDefault();
  navigate(a.getAttribute("href")!.slice(1));
}, true);

// useLocation re-renders on every change of the location shown.
export function useLocation(): Location {
  const [loc, setLoc] = useState(currentLocation);
  useEffect(() => {
    watchers.add(setLoc);
    return () => { watchers.delete(setLoc); };
  }, []);
  return loc;
}

// match returns the named parts of path under pattern ("/admin/projects/:name"),
// or null when it does not match.
export function match(pattern: string, path: string): Record<string, string> | null {
  const ps = pattern.split("/"), xs = path.split("/");
  if (ps.length !== xs.length) return null;
  const out: Record<string, string> = {};
  for (let i = 0; i < ps.length; i++) {
    if (ps[i].startsWith(":")) out[ps[i].slice(1)] = decodeURIComponent(xs[i]);
    else if (ps[i] !== xs[i]) return null;
  }
  return out;
}

// navigate shows to ("/usage?by=day") as a new history entry, with state
// when given (history.state there), unless the page's guard holds it.
export function navigate(to: string, state: unknown = null) {
  if (ask(() => push(to, state))) push(to, state);
}

// leaveThen runs go (logging out, say) once the page may be left: at
// once, or when its guard's user agreed.
export function leaveThen(go: () => void) {
  if (ask(go)) go();
}

// replaceAddress changes the address shown without a visit (the
// terminal's start names its session), dropping any state.
export function replaceAddress(to: string) {
  history.replaceState(null, "", "#" + to);
  shown = location.href;
  shownState = null;
}
