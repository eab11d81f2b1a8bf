// Package runtimetest is the conformance suite every runtime passes: start a
// session with the environment contract, reach its agent only with its
// secret, list it (also from a restarted control plane), give it a
// workspace that outlives it, and stop it.
package runtimetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/testutil"
)

// Factory returns a runtime. Every call on one Factory returns a runtime
// over the same state, as a restarted control plane would get.
type Factory func() runtime.Runtime

// workspaceReleaser is a runtime that keeps something of a workspace on
// the host after its sessions (the oci runtime's filesystem mounted on
// it) until told to let it go.
type workspaceReleaser interface {
	ReleaseWorkspace(dir string) error
}

// Run runs the suite; newFactory is called once per subtest.
func Run(t *testing.T, newFactory func(t *testing.T) Factory) {
	t.Run("EnvironmentContract", func(t *testing.T) {
		t.Parallel()
		rt := newFactory(t)()
		spec := start(t, rt, "envtest", []string{"GPU-sim-t4-1", "GPU-sim-t4-2"})
		out := ExecOut(t, rt, spec, `printf '%s|%s|%s|%s|%s|%s' "$DEVGPU_SESSION_ID" "$DEVGPU_PROJECT" "$DEVGPU_USER" "$DEVGPU_GPU_TYPE" "$CUDA_VISIBLE_DEVICES" "$NVIDIA_VISIBLE_DEVICES"`)
		want := spec.SessionID + "|proj|alice|t4|GPU-sim-t4-1,GPU-sim-t4-2|GPU-sim-t4-1,GPU-sim-t4-2"
		if out != want {
			t.Fatalf("session environment = %q, want %q", out, want)
		}
	})

	t.Run("SessionsSeeOnlyTheirGPUs", func(t *testing.T) {
		t.Parallel()
		rt := newFactory(t)()
		a := start(t, rt, "gpua", []string{"GPU-sim-t4-0"})
		b := start(t, rt, "gpub", []string{"GPU-sim-t4-3"})
		if got := ExecOut(t, rt, a, `echo -n $CUDA_VISIBLE_DEVICES`); got != "GPU-sim-t4-0" {
			t.Errorf("session a sees %q", got)
		}
		if got := ExecOut(t, rt, b, `echo -n $CUDA_VISIBLE_DEVICES`); got != "GPU-sim-t4-3" {
			t.Errorf("session b sees %q", got)
		}
	})

	t.Run("WrongSecretRefused", func(t *testing.T) {
		t.Parallel()
		rt := newFactory(t)()
		spec := start(t, rt, "secret", []string{"GPU-sim-t4-0"})
		wrong := spec
		wrong.AgentSecret = strings.Repeat("0", len(spec.AgentSecret))
		if _, err := Dial(t, rt, wrong); err == nil {
			t.Fatal("SSH handshake with a wrong secret succeeded")
		}
		// The agent still serves the right secret afterwards.
		if got := ExecOut(t, rt, spec, "echo -n ok"); got != "ok" {
			t.Fatalf("after a refused connection, exec printed %q", got)
		}
	})

	t.Run("StopEndsSession", func(t *testing.T) {
		t.Parallel()
		rt := newFactory(t)()
		spec := start(t, rt, "stop", []string{"GPU-sim-t4-0"})
		if !listed(t, rt, spec.SessionID) {
			t.Fatal("started session not listed")
		}
		ctx := testutil.Context(t, testutil.WaitMedium)
		if err := rt.Stop(ctx, spec.SessionID); err != nil {
			t.Fatal(err)
		}
		if listed(t, rt, spec.SessionID) {
			t.Fatal("stopped session still listed")
		}
		if _, err := rt.Connect(ctx, spec.SessionID); !errors.Is(err, runtime.ErrNotFound) {
			t.Fatalf("Connect to a stopped session: %v, want ErrNotFound", err)
		}
		if err := rt.Stop(ctx, spec.SessionID); err != nil {
			t.Fatalf("second Stop: %v", err)
		}
	})

	t.Run("RestartedControlPlaneFindsSessions", func(t *testing.T) {
		t.Parallel()
		factory := newFactory(t)
		spec := start(t, factory(), "restart", []string{"GPU-sim-t4-0"})
		again := factory()
		if !listed(t, again, spec.SessionID) {
			t.Fatal("a new runtime over the same state does not list the session")
		}
		if got := ExecOut(t, again, spec, "echo -n $DEVGPU_SESSION_ID"); got != spec.SessionID {
			t.Fatalf("exec through the new runtime printed %q", got)
		}
		ctx := testutil.Context(t, testutil.WaitMedium)
		if err := again.Stop(ctx, spec.SessionID); err != nil {
			t.Fatal(err)
		}
		if listed(t, again, spec.SessionID) {
			t.Fatal("session still listed after Stop from the new runtime")
		}
	})

	// A session's workspace outlives it: what one session writes there the
	// next one reads, also read-only. That a read-only workspace refuses
	// writes is each isolating runtime's own test; the local runtime cannot
	// enforce it.
	t.Run("Workspace", func(t *testing.T) {
		t.Parallel()
		rt := newFactory(t)()
		ws := t.TempDir()
		if r, ok := rt.(workspaceReleaser); ok { // before TempDir removes it
			t.Cleanup(func() {
				if err := r.ReleaseWorkspace(ws); err != nil {
					t.Errorf("ReleaseWorkspace: %v", err)
				}
			})
		}
		ctx := testutil.Context(t, testutil.WaitMedium)

		spec := newSpec(t, "ws", []string{"GPU-sim-t4-0"})
		spec.Workspace = ws
		StartSpec(t, rt, spec)
		ExecOut(t, rt, spec, `echo hi > "$DEVGPU_WORKSPACE/f"`)
		if err := rt.Stop(ctx, spec.SessionID); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(ws, "f")); err != nil || string(b) != "hi\n" {
			t.Fatalf("after Stop, the workspace file holds %q (%v), want %q", b, err, "hi\n")
		}

		ro := newSpec(t, "wsro", []string{"GPU-sim-t4-0"})
		ro.Workspace, ro.WorkspaceReadOnly = ws, true
		StartSpec(t, rt, ro)
		if got := ExecOut(t, rt, ro, `cat "$DEVGPU_WORKSPACE/f"`); got != "hi\n" {
			t.Fatalf("a second session reads %q from the workspace, want %q", got, "hi\n")
		}
		if err := rt.Stop(ctx, ro.SessionID); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(ws, "f")); err != nil || string(b) != "hi\n" {
			t.Fatalf("after the second Stop, the workspace file holds %q (%v)", b, err)
		}

		// A workspace that does not exist fails the start and is not created.
		missing := filepath.Join(ws, "missing")
		bad := newSpec(t, "wsbad", []string{"GPU-sim-t4-0"})
		bad.Workspace = missing
		if err := rt.Start(ctx, bad); err == nil {
			_ = rt.Stop(context.Background(), bad.SessionID)
			t.Fatal("a session with a missing workspace started")
		}
		if _, err := os.Lstat(missing); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the missing workspace was created: %v", err)
		}
		if listed(t, rt, bad.SessionID) {
			t.Fatal("a session whose start failed is listed")
		}
	})

	t.Run("IdleExit", func(t *testing.T) {
		t.Parallel()
		rt := newFactory(t)()
		spec := runtime.Spec{SessionID: sessionID(t, "idle"), Project: "proj", User: "alice", GPUType: "t4",
			GPUs: []string{"GPU-sim-t4-0"}, AgentSecret: strings.Repeat("ab", 32), IdleExit: 300 * time.Millisecond}
		ctx := testutil.Context(t, testutil.WaitMedium)
		if err := rt.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rt.Stop(context.Background(), spec.SessionID) })
		testutil.Eventually(t, testutil.WaitMedium, "the idle agent to exit", func() bool {
			return !listed(t, rt, spec.SessionID)
		})
	})
}

func sessionID(t *testing.T, prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9)
}

func newSpec(t *testing.T, prefix string, gpus []string) runtime.Spec {
	return runtime.Spec{
		SessionID: sessionID(t, prefix), Project: "proj", User: "alice", GPUType: "t4",
		GPUs: gpus, AgentSecret: strings.Repeat("5e", 32), IdleExit: time.Minute,
	}
}

func start(t *testing.T, rt runtime.Runtime, prefix string, gpus []string) runtime.Spec {
	t.Helper()
	return StartSpec(t, rt, newSpec(t, prefix, gpus))
}

// StartSpec starts the session and stops it when the test ends.
func StartSpec(t *testing.T, rt runtime.Runtime, spec runtime.Spec) runtime.Spec {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitMedium)
	if err := rt.Start(ctx, spec); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := rt.Stop(context.Background(), spec.SessionID); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return spec
}

func listed(t *testing.T, rt runtime.Runtime, id string) bool {
	t.Helper()
	list, err := rt.List(testutil.Context(t, testutil.WaitShort))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return slices.ContainsFunc(list, func(in runtime.Instance) bool { return in.SessionID == id })
}

// Dial connects to the session's agent as the broker does and completes
// the SSH handshake.
func Dial(t *testing.T, rt runtime.Runtime, spec runtime.Spec) (*ssh.Client, error) {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitShort)
	conn, err := rt.Connect(ctx, spec.SessionID)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(testutil.WaitShort))
	if err := agent.WritePreamble(conn, spec.AgentSecret); err != nil {
		conn.Close()
		return nil, err
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, "agent", &ssh.ClientConfig{User: spec.User, HostKeyCallback: ssh.InsecureIgnoreHostKey()})
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), nil
}

// Exec runs cmd in the session over the agent, as a shell client would,
// and returns its output and how it ended.
func Exec(t *testing.T, rt runtime.Runtime, spec runtime.Spec, cmd string) (stdout, stderr string, err error) {
	t.Helper()
	client, err := Dial(t, rt, spec)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	defer client.Close()
	s, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out, errOut bytes.Buffer
	s.Stdout, s.Stderr = &out, &errOut
	err = s.Run(cmd)
	return out.String(), errOut.String(), err
}

// ExecOut runs cmd in the session and returns its stdout; a failure of cmd
// fails the test.
func ExecOut(t *testing.T, rt runtime.Runtime, spec runtime.Spec, cmd string) string {
	t.Helper()
	out, stderr, err := Exec(t, rt, spec, cmd)
	if err != nil {
		t.Fatalf("exec %q: %v (stderr %q)", cmd, err, stderr)
	}
	return out
}
