// Errors and status lines: an error is the server's one sentence in
// role="alert"; a status line (saved, live, reconnecting) is role="status",
// so that screen readers announce both.
import type { ComponentChildren } from "preact";
import { ApiError } from "../api";

// message is an error's sentence: the server's detail for an API error.
export function message(e: unknown): string {
  if (e instanceof ApiError || e instanceof Error) return e.message;
  return String(e);
}

export function ErrorText({ error, id }: { error: unknown; id?: string }) {
  if (!error) return null;
  return <p class="error" role="alert" id={id}>{message(error)}</p>;
}

// Status is always in the page, so that changes to its text are announced.
export function Status({ children, id }: { children?: ComponentChildren; id?: string }) {
  return <p class="status" role="status" id={id}>{children}</p>;
}
