// A terminal starts a session, or opens a shell, at once only when this
// page's own button or link asked for it. Any website can send a
// signed-in browser to #/terminal?project=P or #/terminal/ID; it cannot
// write this origin's sessionStorage, nor the history state of an entry
// this page pushed. openTerminal records a random nonce in both; the
// terminal page takes it (once) and, without it, asks first.
import { navigate } from "../router";

const KEY = "devgpu.terminal-intent";

export type Target = { project: string; gpu_type?: string } | { session: string };

interface Intent { nonce: string; target: string }

// address is the terminal page's address for target.
export function address(t: Target): string {
  if ("session" in t) return `/terminal/${encodeURIComponent(t.session)}`;
  const q = new URLSearchParams({ project: t.project });
  if (t.gpu_type) q.set("gpu_type", t.gpu_type);
  return `/terminal?${q}`;
}

function nonce(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// openTerminal goes to the terminal for target, which starts or opens
// it without asking: call it only from what the user pressed.
export function openTerminal(t: Target) {
  const to = address(t);
  const i: Intent = { nonce: nonce(), target: new URL("#" + to, location.href).hash };
  try {
    sessionStorage.setItem(KEY, JSON.stringify(i));
  } catch {
    // No storage (a locked-down browser): the terminal page asks.
  }
  navigate(to, { terminalIntent: i.nonce });
}

// takeIntent says whether the page's own button asked for the terminal
// at the address shown, and forgets the intent either way: it counts
// once, and a reload or a return through history asks again.
export function takeIntent(): boolean {
  const to = location.hash;
  let stored: Intent | null = null;
  try {
    stored = JSON.parse(sessionStorage.getItem(KEY) || "null") as Intent | null;
    sessionStorage.removeItem(KEY);
  } catch {
    return false;
  }
  const state = history.state as { terminalIntent?: unknown } | null;
  const given = state && typeof state === "object" ? state.terminalIntent : undefined;
  if (given !== undefined) history.replaceState(null, "", location.href);
  return !!stored && typeof stored.nonce === "string" && stored.nonce.length > 0 &&
    given === stored.nonce && stored.target === to;
}
