// Hash routes (#/admin/projects/ml): the server serves one page, and a
// reload or a shared link lands on the same view.
import { useEffect, useState } from "preact/hooks";

export interface Location { path: string; query: URLSearchParams }

export function currentLocation(): Location {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, q] = raw.split("?", 2);
  return { path: path || "/", query: new URLSearchParams(q || "") };
}

// useLocation re-renders on every hash change.
export function useLocation(): Location {
  const [loc, setLoc] = useState(currentLocation());
  useEffect(() => {
    const on = () => setLoc(currentLocation());
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
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

export function navigate(to: string) { location.hash = to; }
