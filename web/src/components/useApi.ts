// useApi loads a GET endpoint's JSON and keeps it for the page: data is
// undefined while loading, error the server's sentence when it failed.
import { useCallback, useEffect, useState } from "preact/hooks";
import { api } from "../api";

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  reload: () => Promise<void>;
  set: (v: T) => void;
}

export function useApi<T>(path: string | null): Loaded<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const reload = useCallback(async () => {
    if (!path) return;
    try {
      setData(await api<T>("GET", path));
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [path]);
  useEffect(() => { setData(undefined); setError(null); reload(); }, [reload]);
  return { data, error, reload, set: setData };
}

// useNow re-renders every interval and returns the time, for ages and
// countdowns that move without new data.
export function useNow(intervalMs: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), intervalMs);
    return () => clearInterval(t);
  }, [intervalMs]);
  return now;
}
