// The console talks to the same /api/v1 as the CLI, authenticated by its
// httpOnly cookie; every state-changing request carries the CSRF token.
import type { ConsoleSession, Problem } from "./types";

export class ApiError extends Error {
  constructor(public status: number, message: string) { super(message); }
}

let csrfToken = "";

// setCSRF records the login's CSRF token (from /api/v1/console/session).
export function setCSRF(token: string) { csrfToken = token; }

// api calls the API and returns its JSON answer; a problem answer throws
// ApiError with the server's one-sentence detail.
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const resp = await apiFetch(method, path, body);
  if (resp.status === 204) return undefined as T;
  const text = await resp.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

// apiFetch is api's request, for callers that need the response itself
// (its headers, such as an ETag, or a streamed body): headers are added to
// the request's, and a problem answer throws ApiError as api does.
export async function apiFetch(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Response> {
  headers = { Accept: "application/json", ...headers };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken;
  let resp: Response;
  try {
    resp = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "The devgpu server cannot be reached; check your connection and try again.");
  }
  if (!resp.ok) throw await problem(resp);
  return resp;
}

async function problem(resp: Response): Promise<ApiError> {
  try {
    const p = (await resp.json()) as Problem;
    return new ApiError(resp.status, p.detail || p.title);
  } catch {
    return new ApiError(resp.status, `The server answered ${resp.status} ${resp.statusText}.`);
  }
}

// session returns the browser's login, or null when it has none.
export async function session(): Promise<ConsoleSession | null> {
  try {
    const s = await api<ConsoleSession>("GET", "/api/v1/console/session");
    setCSRF(s.csrf);
    return s;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}
