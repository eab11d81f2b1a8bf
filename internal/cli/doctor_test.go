package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

// doctorAPI serves the few endpoints doctor uses; a nil field answers 500.
type doctorAPI struct {
	healthy  bool
	token    string
	projects []sdk.Project
	gpus     []sdk.GPUPool
}

func (f doctorAPI) server(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !f.healthy {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"status":"ok","version":"server-version"}`))
	})
	authed := func(h func() any) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+f.token {
				w.Header().Set("Content-Type", "application/problem+json")
				w.WriteHeader(http.StatusUnauthorized)
				json.NewEncoder(w).Encode(sdk.Problem{Title: "Unauthorized", Status: 401, Detail: "invalid token"})
				return
			}
			json.NewEncoder(w).Encode(h())
		}
	}
	mux.HandleFunc("GET /api/v1/whoami", authed(func() any { return sdk.Whoami{User: "ada"} }))
	mux.HandleFunc("GET /api/v1/projects", authed(func() any { return f.projects }))
	mux.HandleFunc("GET /api/v1/projects/{name}", authed(func() any { return f.projects[0] }))
	mux.HandleFunc("GET /api/v1/gpus", authed(func() any { return f.gpus }))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

var goodDoctorAPI = doctorAPI{
	healthy:  true,
	token:    "tok",
	projects: []sdk.Project{{Name: "default"}, {Name: "ml-research"}},
	gpus:     []sdk.GPUPool{{Type: "t4", Region: "local", Free: 3, Total: 4}},
}

// writeFile writes data to dir/name and returns the path.
func writeTestFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDoctor(t *testing.T) {
	t.Parallel()
	const sshBlock = "Host other\n  User x\n\n# --- devgpu start ---\nHost devgpu.*\n  ProxyCommand devgpu ssh-proxy %h\n# --- devgpu end ---\n"
	for _, tc := range []struct {
		name    string
		api     *doctorAPI
		config  string // "" for no file; URL is replaced by the server's
		env     map[string]string
		ssh     string // "" for no file
		want    map[string]string
		wantFix string
	}{
		{
			name: "all good", api: &goodDoctorAPI, config: `{"url":"URL","token":"tok"}`, ssh: sshBlock,
			want: map[string]string{"config": "ok", "server": "ok", "login": "ok", "projects": "ok", "gpus": "ok", "ssh-config": "ok"},
		},
		{
			name: "env only", api: &goodDoctorAPI, env: map[string]string{"DEVGPU_URL": "URL", "DEVGPU_TOKEN": "tok"}, ssh: sshBlock,
			want: map[string]string{"config": "ok", "server": "ok", "login": "ok", "projects": "ok", "gpus": "ok", "ssh-config": "ok"},
		},
		{
			name: "env token overrides a bad one", api: &goodDoctorAPI, config: `{"url":"URL","token":"old"}`,
			env: map[string]string{"DEVGPU_TOKEN": "tok"}, ssh: sshBlock,
			want:    map[string]string{"config": "WARN", "server": "ok", "login": "ok", "projects": "ok"},
			wantFix: "unset DEVGPU_TOKEN",
		},
		{
			name: "env token refused", api: &goodDoctorAPI, config: `{"url":"URL","token":"tok"}`,
			env: map[string]string{"DEVGPU_TOKEN": "stale"}, ssh: sshBlock,
			want:    map[string]string{"config": "WARN", "server": "ok", "login": "FAIL", "projects": "skip"},
			wantFix: "DEVGPU_TOKEN in your environment overrides the token in your config",
		},
		{
			name: "no config", ssh: "Host x\n",
			want:    map[string]string{"config": "FAIL", "server": "skip", "login": "skip", "projects": "skip", "gpus": "skip", "ssh-config": "FAIL"},
			wantFix: "devgpu login",
		},
		{
			name: "bad json", config: `{"url": `,
			want: map[string]string{"config": "FAIL", "server": "skip", "ssh-config": "FAIL"},
		},
		{
			name: "unreachable", config: `{"url":"http://127.0.0.1:1","token":"tok"}`, ssh: sshBlock,
			want:    map[string]string{"config": "ok", "server": "FAIL", "login": "skip", "projects": "skip", "gpus": "skip", "ssh-config": "ok"},
			wantFix: "devgpu server --dev",
		},
		{
			name: "unhealthy", api: &doctorAPI{token: "tok"}, config: `{"url":"URL","token":"tok"}`, ssh: sshBlock,
			want: map[string]string{"server": "FAIL", "login": "skip"},
		},
		{
			name: "bad token", api: &goodDoctorAPI, config: `{"url":"URL","token":"wrong"}`, ssh: sshBlock,
			want:    map[string]string{"server": "ok", "login": "FAIL", "projects": "skip", "gpus": "skip"},
			wantFix: "new token",
		},
		{
			name: "no projects, no GPUs", api: &doctorAPI{healthy: true, token: "tok", projects: []sdk.Project{}, gpus: []sdk.GPUPool{}},
			config: `{"url":"URL","token":"tok"}`, ssh: sshBlock,
			want:    map[string]string{"login": "ok", "projects": "FAIL", "gpus": "FAIL", "ssh-config": "ok"},
			wantFix: "member add",
		},
		{
			name: "all GPUs busy", api: &doctorAPI{healthy: true, token: "tok", projects: goodDoctorAPI.projects, gpus: []sdk.GPUPool{{Type: "t4", Region: "local", Total: 4}}},
			config: `{"url":"URL","token":"tok"}`, ssh: sshBlock,
			want: map[string]string{"gpus": "ok"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			url := "http://127.0.0.1:1"
			if tc.api != nil {
				url = tc.api.server(t).URL
			}
			d := doctor{
				configPath:    filepath.Join(dir, "config.json"),
				sshConfigPath: filepath.Join(dir, "ssh", "config"),
				http:          &http.Client{Timeout: doctorTimeout},
				version:       "test-version",
				getenv: func(k string) string {
					return strings.ReplaceAll(tc.env[k], "URL", url)
				},
			}
			if tc.config != "" {
				writeTestFile(t, dir, "config.json", strings.ReplaceAll(tc.config, "URL", url))
			}
			if tc.ssh != "" {
				writeTestFile(t, dir, "ssh/config", tc.ssh)
			}
			results := d.run(context.Background())
			var out strings.Builder
			printChecks(&out, results)
			got := map[string]string{}
			for _, r := range results {
				got[r.Check] = r.Status
				if r.Status == "FAIL" && r.Fix == "" {
					t.Errorf("%s failed without saying what to fix", r.Check)
				}
			}
			if len(results) != 7 {
				t.Errorf("got %d checks, want 7:\n%s", len(results), out.String())
			}
			if results[0].Check != "version" || !strings.Contains(results[0].Detail, "devgpu test-version") {
				t.Errorf("first check is %+v, want this CLI's version", results[0])
			}
			allOK := true
			for check, want := range tc.want {
				if got[check] != want {
					t.Errorf("%s: got %q, want %q\n%s", check, got[check], want, out.String())
				}
			}
			for _, r := range results {
				allOK = allOK && r.Status != "FAIL" // a WARN fails nothing
			}
			if err := doctorSummary(results); (err == nil) != allOK {
				t.Errorf("summary %v, all ok %v", err, allOK)
			} else if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("summary is not one line: %q", err)
			}
			if got["server"] == "ok" && !strings.Contains(results[0].Detail, "server server-version") {
				t.Errorf("version check %q lacks the server's version", results[0].Detail)
			}
			if tc.wantFix != "" && !strings.Contains(out.String(), tc.wantFix) {
				t.Errorf("output lacks %q:\n%s", tc.wantFix, out.String())
			}
			if strings.Count(out.String(), "\n") != len(results) {
				t.Errorf("want one line per check:\n%s", out.String())
			}
		})
	}
}

// The command exits 255 with a one-line summary when a check fails.
func TestDoctorCommandExitStatus(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DEVGPU_CONFIG", filepath.Join(dir, "missing.json"))
	t.Setenv("DEVGPU_URL", "")
	t.Setenv("DEVGPU_TOKEN", "")
	t.Setenv("HOME", dir)
	if got := Execute([]string{"doctor"}); got != failureExit {
		t.Fatalf("exit status %d, want %d", got, failureExit)
	}
}
