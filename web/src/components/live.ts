// useLive follows the live view's event stream (GET /api/v1/sessions/live,
// server-sent events, each a whole LiveSnapshot). The browser's
// EventSource reconnects by itself after a dropped connection; when the
// server refuses the stream instead (an expired login, no access), the
// refusal is read once with fetch so that the page can show the server's
// sentence, and a server that is down is tried again with a backoff.
import { useEffect, useState } from "preact/hooks";
import { ApiError, apiFetch } from "../api";
import type { LiveSnapshot } from "../types";

export type LiveState = "connecting" | "live" | "reconnecting" | "stopped";

export interface Live { snapshot: LiveSnapshot | null; state: LiveState; error: unknown }

const MAX_BACKOFF_MS = 10000;

export function useLive(path: string): Live {
  const [live, setLive] = useState<Live>({ snapshot: null, state: "connecting", error: null });
  useEffect(() => {
    let es: EventSource | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let backoff = 500;
    let gone = false;
    const open = () => {
      es = new EventSource(path, { withCredentials: true });
      es.onopen = () => { backoff = 500; };
      es.onmessage = (ev) => {
        try {
          const snapshot = JSON.parse(ev.data) as LiveSnapshot;
          setLive({ snapshot, state: "live", error: null });
        } catch { /* not a snapshot: ignore it */ }
      };
      es.onerror = () => {
        if (es && es.readyState === EventSource.CONNECTING) {
          setLive((l) => ({ ...l, state: "reconnecting" }));
          return;
        }
        es?.close();
        refused();
      };
    };
    // refused asks the server why it closed the stream (a stream that
    // answers is cancelled at once): a 4xx is final and shown; otherwise
    // (down, or answering again) try again later.
    const refused = async () => {
      let error: unknown = null;
      try {
        const resp = await apiFetch("GET", path, undefined, { Accept: "text/event-stream" });
        await resp.body?.cancel().catch(() => {});
      } catch (e) {
        error = e;
      }
      if (gone) return;
      if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
        setLive((l) => ({ ...l, state: "stopped", error }));
        return;
      }
      setLive((l) => ({ ...l, state: "reconnecting", error }));
      timer = setTimeout(open, backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    };
    open();
    return () => { gone = true; clearTimeout(timer); es?.close(); };
  }, [path]);
  return live;
}
