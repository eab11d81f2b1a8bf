#!/usr/bin/env bash
# Starts the embedded default (`devgpu server --dev`) in the background if it
# is not running yet, then opens a GPU shell. Run by `make dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=bin/devgpu
data=${DEVGPU_DATA:-${XDG_DATA_HOME:-$HOME/.local/share}/devgpu}
listen=${DEVGPU_LISTEN:-127.0.0.1:8470}
mkdir -p "$data"

if ! curl -fsS "http://$listen/healthz" >/dev/null 2>&1; then
  echo "devgpu: starting the dev server on $listen (log: $data/server.log)" >&2
  nohup "$bin" server --dev --data "$data" --listen "$listen" >>"$data/server.log" 2>&1 &
  for _ in $(seq 100); do
    curl -fsS "http://$listen/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://$listen/healthz" >/dev/null || { echo "devgpu: the server did not start; see $data/server.log" >&2; exit 1; }
  echo "devgpu: stop it with: $bin server stop --data $data" >&2
fi
if [ "$(command -v devgpu || true)" != "$PWD/$bin" ]; then
  echo "devgpu: to run devgpu by name, put bin/ on your PATH: export PATH=\"$PWD/bin:\$PATH\"" >&2
fi
echo "devgpu: opening a GPU shell; type exit to end the session and free its GPU" >&2
exec "$bin" shell "$@"
