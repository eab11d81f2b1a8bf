// How the console writes times, durations, money and sizes. Times are
// always UTC, as everywhere else in devgpu.

const pad = (n: number) => String(n).padStart(2, "0");

// time: "2026-11-26 09:14:03 UTC" ("" for none).
export function time(iso: string | null | undefined): string {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d.getTime())) return iso;
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
}

// clock: "09:14:03 UTC".
export function clock(iso: string | Date): string {
  const d = typeof iso === "string" ? new Date(iso) : iso;
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
}

// age: a span in milliseconds as "45s", "3m", "1h 5m", "2d 3h".
export function age(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h}h ${m % 60}m` : `${h}h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d}d ${h % 24}h` : `${d}d`;
}

// since: how long ago iso was, relative to now.
export function since(iso: string | null | undefined, now: number): string {
  if (!iso) return "";
  return age(now - new Date(iso).getTime());
}

// goDuration shortens a Go duration string: "30m0s" → "30m", "1h0m0s" → "1h".
export function goDuration(d: string): string {
  if (d === "0s" || d === "") return d;
  return d.replace(/(\d)h0m0s$/, "$1h").replace(/(\d)m0s$/, "$1m");
}

// money: 12.5 in USD → "$12.50"; without a currency (no rate card) plain.
export function money(amount: number, currency: string): string {
  if (currency && /^[A-Z]{3}$/.test(currency)) {
    try {
      return new Intl.NumberFormat("en", { style: "currency", currency }).format(amount);
    } catch { /* an unknown code: written below */ }
  }
  return currency ? `${amount.toFixed(2)} ${currency}` : amount.toFixed(2);
}

// hours: GPU-hours with up to two decimals.
export function hours(h: number): string {
  return `${(Math.round(h * 100) / 100).toLocaleString("en")} GPU-h`;
}

// bytes: 50e9 → "50 GB" (decimal units, as the CLI writes them).
export function bytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${Math.round(n * 10) / 10} ${units[i]}`;
}

// isoDate: "2026-11-26" of a Date, in UTC (the value of an <input type=date>).
export function isoDate(d: Date): string {
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

// list: ["a","b"] → "a, b"; empty → none.
export function list(xs: string[] | undefined, none: string): string {
  return xs && xs.length ? xs.join(", ") : none;
}
