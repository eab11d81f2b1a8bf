// The login page, shown when the browser has no login: single sign-on
// when the server has it, else (or for service accounts) an API token.
// The SSO callback comes back here with #/login?error=... when it fails.
import { useEffect, useState } from "preact/hooks";
import { api, ApiError } from "../api";
import { currentLocation } from "../router";
import type { AuthConfig } from "../types";
import "../terminal/developer.css";

export function LoginPage() {
  const [config, setConfig] = useState<AuthConfig | null>(null);
  const [token, setToken] = useState("");
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState(() => currentLocation().query.get("error") || "");
  useEffect(() => {
    api<AuthConfig>("GET", "/api/v1/auth/config").then(setConfig, () => setConfig({}));
  }, []);
  const submit = async (e: Event) => {
    e.preventDefault();
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
      {err && <p role="alert" class="error">{err}</p>}
      {config?.oidc && (
        <>
          <p><a class="sso" href="/console/sso/start">Log in with single sign-on</a></p>
          {config.sso_required && <p class="muted">This server requires single sign-on for people; API tokens log in service accounts only.</p>}
          <p class="or muted">Or with an API token:</p>
        </>
      )}
      <form onSubmit={submit}>
        <p>
          <label for="login-token">API token</label>
          <input id="login-token" type="password" autoComplete="off" spellcheck={false} value={token}
            onInput={(e) => setToken((e.target as HTMLInputElement).value)} />
        </p>
        <p><button type="submit" class="primary" disabled={busy}>Log in with token</button></p>
      </form>
    </main>
  );
}
