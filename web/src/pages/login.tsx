// The login page, shown when the browser has no login: single sign-on
// when the server has it, else (or for service accounts) an API token.
// A failed single sign-on comes back here with its sentence in the
// devgpu_login_error cookie (sdk.LoginErrorCookie), which the page shows
// once and clears; nothing in the address is shown, since anyone can make
// a link. problem: the browser's login could not be read (not a 401).
import { useEffect, useState } from "preact/hooks";
import { api, ApiError } from "../api";
import { currentLocation } from "../router";
import { setTitle } from "../components/title";
import type { AuthConfig } from "../types";
import "../terminal/developer.css";

const LOGIN_ERROR_COOKIE = "devgpu_login_error";

// takeLoginError reads the failed sign-in's sentence and clears it.
function takeLoginError(): string {
  const c = document.cookie.split("; ").find((kv) => kv.startsWith(LOGIN_ERROR_COOKIE + "="));
  if (!c) return "";
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `${LOGIN_ERROR_COOKIE}=; Max-Age=0; Path=/; SameSite=Lax${secure}`;
  try {
    return decodeURIComponent(c.slice(LOGIN_ERROR_COOKIE.length + 1));
  } catch {
    return "Single sign-on failed; try again, and tell the administrator if it fails again.";
  }
}

export function LoginPage({ problem }: { problem?: string }) {
  const [config, setConfig] = useState<AuthConfig | null>(null);
  const [token, setToken] = useState("");
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState(takeLoginError);
  useEffect(() => {
    setTitle("Log in");
    api<AuthConfig>("GET", "/api/v1/auth/config").then(setConfig, () => setConfig({}));
  }, []);
  const submit = async (e: Event) => {
    e.preventDefault();
    if (busy) return;
    if (!token.trim()) {
      setErr("Enter an API token (`devgpu admin token create` makes one), or log in with single sign-on.");
      return;
    }
    setBusy(true);
    setErr("");
    try {
      await api("POST", "/api/v1/console/login", { token: token.trim() });
    } catch (e) {
      setBusy(false);
      setErr(e instanceof ApiError ? e.message : String(e));
      return;
    }
    // Land where the address pointed, unless that was this page.
    if (currentLocation().path === "/login") history.replaceState(null, "", "#/");
    location.reload();
  };
  return (
    <main id="main" class="login" tabIndex={-1}>
      <h1>Log in to devgpu</h1>
      {problem && (
        <div role="alert" class="error">
          <p>The console could not read your login: {problem}</p>
          <p><button type="button" onClick={() => location.reload()}>Try again</button> or log in again below.</p>
        </div>
      )}
      {err && <p role="alert" class="error">{err}</p>}
      {config?.web_login && (
        <>
          <p><a class="sso" href="/console/sso/start">Log in with single sign-on</a></p>
          {config.sso_required && <p class="muted">This server requires single sign-on for people; API tokens log in service accounts only.</p>}
          <p class="or muted">Or with an API token:</p>
        </>
      )}
      {config && !config.web_login && config.sso_required && (
        <p class="muted">This server requires single sign-on for people, which the console cannot offer until the administrator sets the server's public_url; log in with `devgpu login` meanwhile. API tokens log in service accounts only.</p>
      )}
      <form onSubmit={submit}>
        <p>
          <label for="login-token">API token</label>
          <input id="login-token" type="password" autoComplete="off" spellcheck={false} value={token}
            onInput={(e) => setToken((e.target as HTMLInputElement).value)} />
        </p>
        <p><button type="submit" class="primary" aria-disabled={busy}>Log in with token</button></p>
      </form>
    </main>
  );
}
