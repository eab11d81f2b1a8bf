// goDurationMs reads a Go duration string ("1m0s", "1h30m", "500ms",
// "2.5s") as milliseconds; undefined when it is not one.
export function goDurationMs(d: string | undefined): number | undefined {
  if (!d) return undefined;
  const units: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, "μs": 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/gy;
  let ms = 0, at = 0, m: RegExpExecArray | null;
  const sign = d.startsWith("-") ? -1 : 1;
  re.lastIndex = d.startsWith("-") || d.startsWith("+") ? 1 : 0;
  if (d.slice(re.lastIndex) === "0") return 0;
  while ((m = re.exec(d)) !== null) {
    ms += parseFloat(m[1]) * units[m[2]];
    at = re.lastIndex;
  }
  return at === d.length && at > 0 ? sign * ms : undefined;
}
