// The API's wire types (sdk/*.go), as far as the console uses them.

export interface Problem { title: string; status: number; detail?: string }

export interface Whoami {
  user: string;
  org_admin: boolean;
  runtime?: string;
  runtime_warnings?: string[];
  auth?: "token" | "sso";
  expires_at?: string;
  groups?: string[];
  projects?: { name: string; role: string; source?: string }[];
}

export interface ConsoleSession extends Whoami { csrf: string; sso?: boolean }

export interface Session {
  id: string; project: string; user: string; state: string;
  gpu_type: string; region: string; gpus: string[];
  backend?: string; node?: string; image?: string;
  attachments: number; detach_grace?: string;
  created_at: string; started_at: string | null; ended_at: string | null;
  end_reason?: string; ended_by?: string; error?: string; warnings?: string[];
}

export interface SessionEvent {
  id?: string; position?: number; reason?: string;
  step?: string; done?: number; total?: number;
  session?: Session; problem?: Problem;
}

export interface LiveAttachment { kind: "terminal" | "shell"; opened_at: string }
export interface LiveSession extends Session {
  shells?: LiveAttachment[];
  last_activity?: string; gpu_utilization?: number;
  idle_ends_at?: string; lifetime_ends_at?: string; grace_ends_at?: string;
  alive_because?: string;
}
export interface LiveSnapshot { at: string; sessions: LiveSession[] }

export interface Egress { mode: string; allow?: string[] }
export interface Budget { amount: number; unit: string; thresholds?: number[]; action?: string }
export interface Workspace { enabled: boolean; limit_bytes?: number }
export interface ProjectSettings {
  gpu_enabled?: boolean; max_gpus?: number; max_gpus_per_user?: number;
  gpu_types?: string[]; regions?: string[]; default_image?: string; images?: string[];
  shell_mode?: string; idle_timeout?: string; max_lifetime?: string; detach_grace?: string;
  egress?: Egress; budget?: Budget; workspace?: Workspace;
}
export interface Setting { value: unknown; source: "project" | "org" | "default"; locked?: boolean }
export interface Project {
  name: string; settings: ProjectSettings; effective: Record<string, Setting>;
  created_at: string; updated_at: string;
}
export interface ProjectUpdate {
  settings: ProjectSettings; unset?: string[]; stop_running?: boolean; budget_fields?: string[];
}
export interface Member { user: string; role: string; source?: string }
export interface Quota { gpu_type: string; region?: string; max: number }
export interface OrgPolicy {
  defaults: ProjectSettings; locked?: string[]; quotas?: Quota[];
  registries?: string[]; allow_host_access?: string[]; require_sso?: boolean;
}
export interface GPUPool { type: string; region: string; free: number; total: number }
export interface UsageRow { key: string; gpu_seconds: number; gpu_hours: number; cost: number; cost_micros: number }
export interface UsageReport { from: string; to: string; by: string; currency: string; rows: UsageRow[]; total: UsageRow }
export interface AuditEvent {
  id: number; at: string; actor: string; action: string;
  project?: string; target?: string; before?: unknown; after?: unknown;
}
export interface ProjectStanding {
  project: string; role?: string; gpu_enabled: boolean;
  gpus_in_use: number; max_gpus: number; my_gpus_in_use: number; max_gpus_per_user: number;
  can_start: number; gpu_types: GPUPool[];
  budget?: Budget; spent: number; remaining: number; currency: string;
}
export interface User { name: string; org_admin: boolean; disabled: boolean; service_account?: boolean; sso?: boolean }

// The terminal's text messages (sdk/terminal.go).
export interface TerminalMessage {
  // Types this page does not know (from a newer server) are ignored.
  type: "resize" | "leave" | "ready" | "exit" | "keepalive" | (string & {});
  cols?: number; rows?: number; token?: string;
  input_received?: number; oldest?: number;
  // ready: the interval of the server's keepalive messages (ms).
  keepalive_ms?: number;
  status?: number; signal?: string; message?: string;
}

// How to log in (sdk/auth.go, GET /api/v1/auth/config).
export interface AuthConfig {
  oidc?: { issuer: string; client_id: string; scopes: string[] };
  sso_required?: boolean;
  // web_login: the console can log in with single sign-on (/console/sso/start).
  web_login?: boolean;
}
