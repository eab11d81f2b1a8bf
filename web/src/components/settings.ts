// The project settings (sdk.ProjectSettings) as the console edits them:
// a label and a kind per key, the value written in words, and a draft —
// the editor's text — that turns back into the wire value or into one
// sentence saying what to type instead.
import type { Budget, Egress, ProjectSettings, Workspace } from "../types";
import { bytes, goDuration, list } from "./format";

export type Kind = "bool" | "count" | "list" | "text" | "mode" | "duration" | "egress" | "budget" | "workspace";

export interface SettingInfo { key: keyof ProjectSettings; label: string; kind: Kind; help: string }

// SETTINGS lists the settings in policy.Names order, which is how the
// server and the CLI show them.
export const SETTINGS: SettingInfo[] = [
  { key: "gpu_enabled", label: "GPUs enabled", kind: "bool", help: "Whether sessions may start at all." },
  { key: "max_gpus", label: "Max GPUs", kind: "count", help: "GPUs the project may hold at once; 0 for no cap." },
  { key: "max_gpus_per_user", label: "Max GPUs per user", kind: "count", help: "GPUs each member may hold at once; 0 for no cap." },
  { key: "gpu_types", label: "GPU types", kind: "list", help: "Comma-separated, e.g. t4, a100; empty for any." },
  { key: "regions", label: "Regions", kind: "list", help: "Comma-separated; empty for any." },
  { key: "default_image", label: "Default image", kind: "text", help: "A catalog name or an image reference; empty for the server's." },
  { key: "images", label: "Allowed images", kind: "list", help: "Comma-separated catalog names or references; empty for any." },
  { key: "shell_mode", label: "Shell mode", kind: "mode", help: "dedicated: a session per shell; shared: one per user; spillover: dedicated up to the per-user cap." },
  { key: "idle_timeout", label: "Idle timeout", kind: "duration", help: "Such as 30m or 2h; 0s for none." },
  { key: "max_lifetime", label: "Max lifetime", kind: "duration", help: "Such as 8h; 0s for none." },
  { key: "detach_grace", label: "Detach grace", kind: "duration", help: "How long a session waits for a vanished client, such as 60s." },
  { key: "egress", label: "Network egress", kind: "egress", help: "all, none, or an allow-list of destinations such as 10.0.0.0/8, pypi.org:443." },
  { key: "budget", label: "Monthly budget", kind: "budget", help: "An amount per calendar month (UTC); 0 for none." },
  { key: "workspace", label: "Workspace", kind: "workspace", help: "A persistent directory per user, with an optional size limit." },
];

export function infoOf(key: string): SettingInfo {
  return SETTINGS.find((s) => s.key === key) || { key: key as keyof ProjectSettings, label: key, kind: "text", help: "" };
}

// BUILT_IN mirrors policy.BuiltIn (internal/policy/policy.go): what applies
// where neither the organisation nor the project sets a value. The
// organisation page shows it for settings without an organisation default.
export const BUILT_IN: Required<ProjectSettings> = {
  gpu_enabled: true, max_gpus: 0, max_gpus_per_user: 0, gpu_types: [], regions: [],
  default_image: "", images: [], shell_mode: "dedicated", idle_timeout: "0s",
  max_lifetime: "0s", detach_grace: "1m0s", egress: { mode: "all" },
  budget: { amount: 0, unit: "currency", action: "refuse" }, workspace: { enabled: false },
};

// describe writes a setting's value in words, as `devgpu admin project show` does.
export function describe(key: string, v: unknown): string {
  const kind = infoOf(key).kind;
  switch (kind) {
    case "bool": return v ? "yes" : "no";
    case "count": return v ? String(v) : "no limit";
    case "list": return list(v as string[], "any");
    case "text": return typeof v === "string" ? v || "the server's default" : JSON.stringify(v);
    case "mode": return String(v ?? "");
    case "duration": {
      const d = goDuration(String(v ?? "0s"));
      if (d === "0s") return key === "detach_grace" ? "0s (ends at once)" : "none";
      return d;
    }
    case "egress": {
      const e = (v || { mode: "all" }) as Egress;
      return e.mode === "allow-list" ? `allow-list: ${list(e.allow, "nothing")}` : e.mode;
    }
    case "budget": return describeBudget(v as Budget | undefined);
    case "workspace": {
      const w = (v || { enabled: false }) as Workspace;
      if (!w.enabled) return "off";
      return w.limit_bytes ? `on, ${bytes(w.limit_bytes)} per user` : "on, no size limit";
    }
  }
}

function describeBudget(b: Budget | undefined): string {
  if (!b || !b.amount) return "none";
  let s = String(b.amount) + (b.unit === "gpu-hours" ? " GPU-hours a month" : " a month (rate card currency)");
  if (b.thresholds?.length) s += ", warn at " + b.thresholds.map((t) => `${t}%`).join(", ");
  return s + (b.action === "stop" ? "; at 100% stop running sessions" : "; at 100% refuse new sessions");
}

// Draft is what an editor holds: text as typed, turned into a value only
// when saved.
export interface Draft {
  on: boolean;        // bool, workspace enabled
  text: string;       // count, list, text, mode, duration, egress allow-list, budget amount, workspace limit (GB)
  mode: string;       // egress mode, budget unit
  thresholds: string; // budget
  action: string;     // budget
}

export function toDraft(key: string, v: unknown): Draft {
  const d: Draft = { on: false, text: "", mode: "", thresholds: "", action: "" };
  switch (infoOf(key).kind) {
    case "bool": d.on = Boolean(v); break;
    case "count": d.text = String(v ?? 0); break;
    case "list": d.text = ((v as string[]) || []).join(", "); break;
    case "text": case "mode": d.text = String(v ?? ""); break;
    case "duration": d.text = goDuration(String(v ?? "0s")); break;
    case "egress": {
      const e = (v || { mode: "all" }) as Egress;
      d.mode = e.mode; d.text = (e.allow || []).join(", ");
      break;
    }
    case "budget": {
      const b = (v || BUILT_IN.budget) as Budget;
      d.text = String(b.amount ?? 0); d.mode = b.unit || "currency";
      d.thresholds = (b.thresholds || []).join(", "); d.action = b.action || "refuse";
      break;
    }
    case "workspace": {
      const w = (v || { enabled: false }) as Workspace;
      d.on = w.enabled; d.text = w.limit_bytes ? String(w.limit_bytes / 1e9) : "";
      break;
    }
  }
  return d;
}

const split = (s: string) => s.split(",").map((x) => x.trim()).filter(Boolean);

// fromDraft turns a draft into the setting's wire value, or throws an
// Error whose message is one sentence naming what to type.
export function fromDraft(key: string, d: Draft): unknown {
  const label = infoOf(key).label;
  switch (infoOf(key).kind) {
    case "bool": return d.on;
    case "count": {
      const n = Number(d.text.trim());
      if (d.text.trim() === "" || !Number.isInteger(n) || n < 0) throw new Error(`${label} must be a whole number, 0 or more (0 for no limit).`);
      return n;
    }
    case "list": return split(d.text);
    case "text": case "mode": return d.text.trim();
    case "duration": {
      const t = d.text.trim();
      if (!/^(\d+(\.\d+)?(h|m|s|ms))+$/.test(t)) throw new Error(`${label} must be a duration such as 90s, 30m or 8h (0s for none).`);
      return t;
    }
    case "egress": {
      const e: Egress = { mode: d.mode };
      if (d.mode === "allow-list") e.allow = split(d.text);
      return e;
    }
    case "budget": {
      const amount = Number(d.text.trim());
      if (d.text.trim() === "" || !isFinite(amount) || amount < 0) throw new Error("The budget amount must be a number, 0 or more (0 for no budget).");
      const thresholds = split(d.thresholds).map(Number);
      if (thresholds.some((t) => !Number.isInteger(t))) throw new Error("Budget thresholds must be whole percentages separated by commas, such as 80, 100.");
      const b: Budget = { amount, unit: d.mode, action: d.action };
      if (thresholds.length) b.thresholds = thresholds;
      return b;
    }
    case "workspace": {
      const w: Workspace = { enabled: d.on };
      const t = d.text.trim();
      if (t !== "") {
        const gb = Number(t);
        if (!isFinite(gb) || gb < 0) throw new Error("The workspace limit must be a number of GB, or empty for no limit.");
        if (gb > 0) w.limit_bytes = Math.round(gb * 1e9);
      }
      return w;
    }
  }
}

// budgetFields names the budget fields a draft changes against the budget
// now in effect (the update's budget_fields: the others are kept).
export function budgetFields(now: Budget | undefined, next: Budget): string[] {
  const b = now || BUILT_IN.budget;
  const out: string[] = [];
  if (b.amount !== next.amount) out.push("amount");
  if ((b.unit || "currency") !== next.unit) out.push("unit");
  if ((b.thresholds || []).join(",") !== (next.thresholds || []).join(",")) out.push("thresholds");
  if ((b.action || "refuse") !== next.action) out.push("action");
  return out;
}
