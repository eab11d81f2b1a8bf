//go:build linux

package cli

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/testutil"
)

// linkedAgent is `devgpu agent --link` running against a test hub.
type linkedAgent struct {
	hub  *link.Hub
	dir  string     // the session's working directory
	done chan error // the command's result
	stop context.CancelFunc
}

// startLinkedAgent runs the agent command in this process with --link
// against a hub on a real TLS server, its credential, secret and CA in
// files as a Pod's mounted Secret holds them. credential is what the
// agent's file holds; the hub accepts only "cred-s1" for session s1.
func startLinkedAgent(t *testing.T, credential string) *linkedAgent {
	t.Helper()
	hub := link.NewHub(nil)
	hub.SetVerifier(func(id, cred string) (bool, error) { return id == "s1" && cred == "cred-s1", nil })
	srv := httptest.NewTLSServer(hub)
	t.Cleanup(srv.Close)
	t.Cleanup(hub.Close)

	secrets := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(secrets, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ca := write("ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))
	cred := write("link-credential", credential+"\n")
	secret := write("agent-secret", "s3cret\n")

	a := &linkedAgent{hub: hub, dir: t.TempDir(), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	a.stop = cancel
	cmd := newAgentCmd()
	cmd.SetArgs([]string{"--session", "s1", "--link", srv.URL, "--link-credential-file", cred,
		"--link-ca-file", ca, "--secret-file", secret, "--dir", a.dir})
	cmd.SetOut(&strings.Builder{})
	cmd.SetErr(&strings.Builder{})
	go func() { a.done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-a.done:
		case <-testutil.Context(t, testutil.WaitMedium).Done():
			t.Error("the agent did not stop")
		}
	})
	return a
}

// result waits for the agent command to return.
func (a *linkedAgent) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-a.done:
		a.done <- err // for the cleanup
		return err
	case <-testutil.Context(t, testutil.WaitMedium).Done():
		t.Fatal("the agent kept running")
		return nil
	}
}

// TestAgentServesOverLink runs `devgpu agent --link` as a Pod would: it
// links with what it sees of its node and devices, serves a command
// through a stream the control plane opened, and exits cleanly when the
// control plane stops the session.
func TestAgentServesOverLink(t *testing.T) {
	t.Setenv("DEVGPU_NODE", "node-7")
	t.Setenv("NVIDIA_VISIBLE_DEVICES", "GPU-sim-1,GPU-sim-3")
	t.Setenv("CUDA_VISIBLE_DEVICES", "") // restored after the test
	os.Unsetenv("CUDA_VISIBLE_DEVICES")
	a := startLinkedAgent(t, "cred-s1")
	ctx := testutil.Context(t, testutil.WaitMedium)

	report, err := a.hub.WaitLinked(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if report.Node != "node-7" || !slices.Equal(report.Devices, []string{"GPU-sim-1", "GPU-sim-3"}) {
		t.Errorf("report %+v; want node-7 with GPU-sim-1, GPU-sim-3", report)
	}
	conn, err := a.hub.Dial(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.WritePreamble(conn, "s3cret"); err != nil {
		t.Fatal(err)
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, "agent", &ssh.ClientConfig{User: "dev", HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: testutil.WaitMedium})
	if err != nil {
		t.Fatal(err)
	}
	cl := ssh.NewClient(sc, chans, reqs)
	defer cl.Close()
	s, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Output(`printf '%s|%s' "$CUDA_VISIBLE_DEVICES" "$PWD"`)
	if err != nil {
		t.Fatal(err)
	}
	if want := "GPU-sim-1,GPU-sim-3|" + a.dir; string(out) != want {
		t.Errorf("session sees %q; want %q", out, want)
	}

	a.hub.Forget("s1")
	if err := a.result(t); err != nil {
		t.Errorf("agent after the session was stopped: %v; want a clean exit", err)
	}
}

func TestAgentWithWrongLinkCredentialExits(t *testing.T) {
	a := startLinkedAgent(t, "cred-other")
	err := a.result(t)
	if !errors.Is(err, link.ErrRefused) || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("agent with a wrong credential: %v; want the control plane's 401", err)
	}
}

func TestAgentLinkNeedsItsFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		o    agentOptions
		want string
	}{
		{"empty secret file", agentOptions{session: "s1", link: "https://cp", secretFile: empty, linkCredentialFile: empty}, "--secret-file " + empty + " is empty"},
		{"missing secret file", agentOptions{session: "s1", link: "https://cp", secretFile: filepath.Join(dir, "nope")}, "mount it at --secret-file"},
		{"no secret on stdin", agentOptions{session: "s1", link: "https://cp"}, "no session secret on stdin"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := runAgent(context.Background(), tt.o, strings.NewReader(""), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("runAgent: %v; want %q", err, tt.want)
			}
		})
	}
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		o    agentOptions
		want string
	}{
		{"no session", agentOptions{link: "https://cp", secretFile: secret, linkCredentialFile: secret}, "--link needs --session"},
		{"empty credential", agentOptions{session: "s1", link: "https://cp", secretFile: secret, linkCredentialFile: empty}, "--link-credential-file " + empty + " is empty"},
		{"bad CA", agentOptions{session: "s1", link: "https://cp", secretFile: secret, linkCredentialFile: secret, linkCAFile: secret}, "holds no PEM certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := linkConfig(tt.o, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("linkConfig: %v; want %q", err, tt.want)
			}
		})
	}
}
