// Package systemd holds the systemd unit for one GPU host and its config
// example; this test checks both against the real binary.
package systemd

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.Cleanup()
	os.Exit(code)
}

// unit reads devgpu.service as section → key → values (a key may repeat).
func unit(t *testing.T) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open("devgpu.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("devgpu.service: %q is not key=value in a section", line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The unit keeps sessions running across a stop: only the server is
// signalled, with SIGTERM, and it restarts on failure as root (runc).
func TestUnitStopsOnlyTheServer(t *testing.T) {
	s := unit(t)["Service"]
	for key, want := range map[string]string{
		"User": "root", "KillMode": "process", "KillSignal": "SIGTERM", "Restart": "on-failure", "Type": "simple",
	} {
		if got := s[key]; len(got) != 1 || got[0] != want {
			t.Errorf("[Service] %s = %v, want %s", key, got, want)
		}
	}
	// Each of these would give the server a private mount namespace, or
	// a seccomp filter or capability bound that every container inherits.
	for _, key := range []string{"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ReadWritePaths",
		"SystemCallFilter", "RestrictAddressFamilies", "CapabilityBoundingSet", "NoNewPrivileges", "ProtectHostname", "MemoryDenyWriteExecute"} {
		if v, ok := s[key]; ok {
			t.Errorf("[Service] %s=%v would break runc sessions that outlive the service", key, v)
		}
	}
	if _, ok := s["ExecStop"]; ok {
		t.Error("[Service] has ExecStop; SIGTERM to the server alone (KillMode=process) is what keeps sessions running")
	}
}

// ExecStart is a command line the real binary accepts: every flag is one
// `devgpu server` has, and with the example config the server gets past
// reading it (it then stops at the example's TLS certificate, which this
// host lacks: proof that the config parsed and the flags were taken).
func TestExecStartRunsTheRealServer(t *testing.T) {
	exec0 := unit(t)["Service"]["ExecStart"]
	if len(exec0) != 1 {
		t.Fatalf("ExecStart = %v, want one command", exec0)
	}
	args := strings.Fields(exec0[0])
	if len(args) < 2 || args[0] != "/usr/local/bin/devgpu" || args[1] != "server" {
		t.Fatalf("ExecStart = %q, want /usr/local/bin/devgpu server ...", exec0[0])
	}
	bin := testutil.Binary(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	help, err := exec.CommandContext(ctx, bin, "server", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("devgpu server --help: %v\n%s", err, help)
	}
	flag := regexp.MustCompile(`^--[a-z-]+`)
	for _, a := range args[2:] {
		if f := flag.FindString(a); f != "" && !regexp.MustCompile(`(?m)^\s+(-\w, )?`+regexp.QuoteMeta(f)+`\b`).Match(help) {
			t.Errorf("ExecStart passes %s, which `devgpu server --help` does not list", f)
		}
	}

	dir := t.TempDir()
	example, err := filepath.Abs("server.json")
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range args {
		switch a {
		case "/etc/devgpu/server.json":
			args[i] = example
		case "/var/lib/devgpu":
			args[i] = dir
		}
	}
	cmd := exec.CommandContext(ctx, bin, args[1:]...)
	cmd.Env = append(os.Environ(), "DEVGPU_STORE_URL=")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the server started with the example's certificate missing:\n%s", out)
	}
	if !bytes.Contains(out, []byte("/etc/devgpu/tls/server.crt")) || bytes.Contains(out, []byte("is not valid")) {
		t.Fatalf("devgpu %s did not get as far as the example's TLS certificate:\n%s", strings.Join(args[1:], " "), out)
	}
}

// systemd itself accepts the unit (systemd-analyze verify), with
// ExecStart pointing at the real binary.
func TestSystemdVerifiesTheUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed; the other tests check the unit by hand")
	}
	b, err := os.ReadFile("devgpu.service")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "devgpu.service")
	b = bytes.ReplaceAll(b, []byte("/usr/local/bin/devgpu "), []byte(testutil.Binary(t)+" "))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
	defer cancel()
	out, err := exec.CommandContext(ctx, analyze, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
