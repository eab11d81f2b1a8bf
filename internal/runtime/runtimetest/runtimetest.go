// Package runtimetest is the conformance suite every runtime passes: report
// its capacity, start a session with the GPUs it asks for and the
// environment contract for the devices it landed on, give two sessions
// distinct devices, reach an agent only with its secret, list a session
// where it landed (also from a restarted control plane, which never gives
// a held device away), give it a workspace that outlives it, and stop it.
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
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
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

// Options say what the runtime under test offers, so that one suite fits
// runtimes that choose their host's devices (local, oci, inproc, with a
// hostgpu.Pool) and runtimes whose engine chooses them (kube, with a
// device plugin).
type Options struct {
	// GPU is what every session of the suite asks for. The runtime must
	// be able to run two such sessions at once (four for the restart
	// check of a HostPool runtime: see below).
	GPU runtime.GPURequest
	// Capacity is what the runtime's Capacity must report, in any order.
	Capacity []runtime.Capacity
	// HostPool says that the runtime lends devices from a fixed pool of
	// its host: its Capacity is exactly 2×GPU.Count of GPU's type and
	// region, and a start beyond what is free fails at once instead of
	// waiting for a device. The restart check then also asserts that a
	// restarted runtime refuses a third session while two hold every
	// device, and gives a stopped session's devices to the next.
	HostPool bool
	// Serial runs the checks one after another rather than in parallel:
	// for runtimes whose every Factory shares one engine with few GPUs
	// (a cluster).
	Serial bool
	// HostWorkspace says that the runtime mounts a host directory as the
	// session's workspace (Spec.Workspace); without it the Workspace
	// check is skipped.
	HostWorkspace bool
	// Image is the image of every session ("" for the runtime's default).
	Image string
	// StartTimeout bounds each Start and each wait for a session to end
	// (default testutil.WaitMedium); a cluster that pulls images may need
	// longer.
	StartTimeout time.Duration
}

// HostOptions are the options of a runtime built over HostDevices, as
// local, oci and inproc are in their tests.
func HostOptions() Options {
	return Options{
		GPU:           runtime.GPURequest{Type: "t4", Region: "local", Count: 2},
		Capacity:      []runtime.Capacity{{Type: "t4", Region: "local", Total: 4}},
		HostPool:      true,
		HostWorkspace: true,
	}
}

// HostDevices are the devices to build a HostPool runtime with for
// HostOptions: four simulated t4 in region local.
func HostDevices() []hostgpu.Device {
	devs, err := hostgpu.Simulated("t4:4")
	if err != nil {
		panic(err)
	}
	return devs
}

func (o Options) timeout() time.Duration {
	if o.StartTimeout > 0 {
		return o.StartTimeout
	}
	return testutil.WaitMedium
}

// Run runs the suite; newFactory is called once per subtest.
func Run(t *testing.T, opts Options, newFactory func(t *testing.T) Factory) {
	if opts.GPU.Count < 1 {
		t.Fatal("runtimetest: Options.GPU must ask for at least one GPU")
	}
	s := suite{opts: opts}
	parallel := func(t *testing.T) {
		if !opts.Serial {
			t.Parallel()
		}
	}

	t.Run("Capacity", func(t *testing.T) {
		parallel(t)
		rt := newFactory(t)()
		got, err := rt.Capacity(testutil.Context(t, testutil.WaitShort))
		if err != nil {
			t.Fatalf("Capacity: %v", err)
		}
		if !sameCapacity(got, opts.Capacity) {
			t.Fatalf("Capacity = %v, want %v", got, opts.Capacity)
		}
	})

	// The session's environment holds the contract of DESIGN.md, with
	// the devices Start reported: CUDA_VISIBLE_DEVICES and
	// NVIDIA_VISIBLE_DEVICES both name exactly them, in order.
	t.Run("EnvironmentContract", func(t *testing.T) {
		parallel(t)
		rt := newFactory(t)()
		spec, pl := s.start(t, rt, "envtest")
		if len(pl.Devices) != opts.GPU.Count {
			t.Fatalf("Start placed the session on devices %v, want %d of them", pl.Devices, opts.GPU.Count)
		}
		if pl.Node == "" || pl.Handle == "" {
			t.Fatalf("Start returned placement %+v without a node or a handle", pl)
		}
		out := ExecOut(t, rt, spec, `printf '%s|%s|%s|%s|%s|%s' "$DEVGPU_SESSION_ID" "$DEVGPU_PROJECT" "$DEVGPU_USER" "$DEVGPU_GPU_TYPE" "$CUDA_VISIBLE_DEVICES" "$NVIDIA_VISIBLE_DEVICES"`)
		ids := strings.Join(pl.Devices, ",")
		want := spec.SessionID + "|proj|alice|" + opts.GPU.Type + "|" + ids + "|" + ids
		if out != want {
			t.Fatalf("session environment = %q, want %q", out, want)
		}
	})

	t.Run("SessionsSeeOnlyTheirGPUs", func(t *testing.T) {
		parallel(t)
		rt := newFactory(t)()
		a, pa := s.start(t, rt, "gpua")
		b, pb := s.start(t, rt, "gpub")
		if shared := intersect(pa.Devices, pb.Devices); len(shared) > 0 {
			t.Fatalf("two sessions were given the same devices %v (a %v, b %v)", shared, pa.Devices, pb.Devices)
		}
		if got, want := ExecOut(t, rt, a, `echo -n $CUDA_VISIBLE_DEVICES`), strings.Join(pa.Devices, ","); got != want {
			t.Errorf("session a sees %q, want %q", got, want)
		}
		if got, want := ExecOut(t, rt, b, `echo -n $CUDA_VISIBLE_DEVICES`), strings.Join(pb.Devices, ","); got != want {
			t.Errorf("session b sees %q, want %q", got, want)
		}
	})

	t.Run("WrongSecretRefused", func(t *testing.T) {
		parallel(t)
		rt := newFactory(t)()
		spec, _ := s.start(t, rt, "secret")
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
		parallel(t)
		rt := newFactory(t)()
		spec, _ := s.start(t, rt, "stop")
		if !listed(t, rt, spec.SessionID) {
			t.Fatal("started session not listed")
		}
		ctx := testutil.Context(t, opts.timeout())
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

	// A runtime made again over the same state (a restarted control
	// plane) lists each session where Start placed it, reaches it, and
	// never gives its devices to another session.
	t.Run("RestartedControlPlaneFindsSessions", func(t *testing.T) {
		parallel(t)
		factory := newFactory(t)
		first := factory()
		a, pa := s.start(t, first, "restart")
		again := factory()
		in, ok := instance(t, again, a.SessionID)
		if !ok {
			t.Fatal("a new runtime over the same state does not list the session")
		}
		if !samePlacement(in.Placement, pa) {
			t.Fatalf("the new runtime lists the session at %+v, but Start placed it at %+v", in.Placement, pa)
		}
		if got := ExecOut(t, again, a, "echo -n $DEVGPU_SESSION_ID"); got != a.SessionID {
			t.Fatalf("exec through the new runtime printed %q", got)
		}
		_, pb := s.start(t, again, "restartb")
		if shared := intersect(pa.Devices, pb.Devices); len(shared) > 0 {
			t.Fatalf("the restarted runtime gave devices %v, held by session %s, to a second session", shared, a.SessionID)
		}
		ctx := testutil.Context(t, opts.timeout())
		if opts.HostPool {
			// Every device is held now: a third session is refused at
			// once, and leaves nothing behind.
			c := s.newSpec(t, "restartc")
			if pl, err := again.Start(ctx, c); err == nil {
				_ = again.Stop(context.Background(), c.SessionID)
				t.Fatalf("a third session started on devices %v while two sessions held all %d", pl.Devices, 2*opts.GPU.Count)
			}
			if listed(t, again, c.SessionID) {
				t.Fatal("a session whose start failed is listed")
			}
		}
		if err := again.Stop(ctx, a.SessionID); err != nil {
			t.Fatal(err)
		}
		if listed(t, again, a.SessionID) {
			t.Fatal("session still listed after Stop from the new runtime")
		}
		if opts.HostPool {
			// Stop gave the devices back.
			_, pc := s.start(t, again, "restartc")
			if !sameSet(pc.Devices, pa.Devices) {
				t.Fatalf("after session a stopped, the next session got devices %v, want a's %v", pc.Devices, pa.Devices)
			}
		}
	})

	// A session's workspace outlives it: what one session writes there the
	// next one reads, also read-only. That a read-only workspace refuses
	// writes is each isolating runtime's own test; the local runtime cannot
	// enforce it.
	t.Run("Workspace", func(t *testing.T) {
		if !opts.HostWorkspace {
			t.Skip("the runtime does not mount host directories as workspaces")
		}
		parallel(t)
		rt := newFactory(t)()
		ws := t.TempDir()
		if r, ok := rt.(workspaceReleaser); ok { // before TempDir removes it
			t.Cleanup(func() {
				if err := r.ReleaseWorkspace(ws); err != nil {
					t.Errorf("ReleaseWorkspace: %v", err)
				}
			})
		}
		ctx := testutil.Context(t, opts.timeout())

		spec := s.newSpec(t, "ws")
		spec.Workspace = ws
		StartSpec(t, rt, spec)
		ExecOut(t, rt, spec, `echo hi > "$DEVGPU_WORKSPACE/f"`)
		if err := rt.Stop(ctx, spec.SessionID); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(ws, "f")); err != nil || string(b) != "hi\n" {
			t.Fatalf("after Stop, the workspace file holds %q (%v), want %q", b, err, "hi\n")
		}

		ro := s.newSpec(t, "wsro")
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
		bad := s.newSpec(t, "wsbad")
		bad.Workspace = missing
		if _, err := rt.Start(ctx, bad); err == nil {
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
		parallel(t)
		rt := newFactory(t)()
		spec := s.newSpec(t, "idle")
		spec.IdleExit = 300 * time.Millisecond
		startSpec(t, rt, spec, opts.timeout())
		testutil.Eventually(t, opts.timeout(), "the idle agent to exit", func() bool {
			return !listed(t, rt, spec.SessionID)
		})
	})
}

// suite holds what the checks share.
type suite struct{ opts Options }

func sessionID(t *testing.T, prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9)
}

// newSpec is a session that asks for the suite's GPUs.
func (s suite) newSpec(t *testing.T, prefix string) runtime.Spec {
	return runtime.Spec{
		SessionID: sessionID(t, prefix), Project: "proj", User: "alice", GPU: s.opts.GPU,
		AgentSecret: strings.Repeat("5e", 32), LinkCredential: strings.Repeat("c1", 32),
		Image: s.opts.Image, IdleExit: time.Minute,
	}
}

func (s suite) start(t *testing.T, rt runtime.Runtime, prefix string) (runtime.Spec, runtime.Placement) {
	t.Helper()
	spec := s.newSpec(t, prefix)
	return spec, startSpec(t, rt, spec, s.opts.timeout())
}

// StartSpec starts the session, fails the test if it does not start, and
// stops it when the test ends. It returns spec, to be written inline.
func StartSpec(t *testing.T, rt runtime.Runtime, spec runtime.Spec) runtime.Spec {
	t.Helper()
	startSpec(t, rt, spec, testutil.WaitMedium)
	return spec
}

// Place is StartSpec that returns where the session landed.
func Place(t *testing.T, rt runtime.Runtime, spec runtime.Spec) runtime.Placement {
	t.Helper()
	return startSpec(t, rt, spec, testutil.WaitMedium)
}

func startSpec(t *testing.T, rt runtime.Runtime, spec runtime.Spec, timeout time.Duration) runtime.Placement {
	t.Helper()
	ctx := testutil.Context(t, timeout)
	pl, err := rt.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := rt.Stop(ctx, spec.SessionID); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return pl
}

// instance is the session as rt lists it.
func instance(t *testing.T, rt runtime.Runtime, id string) (runtime.Instance, bool) {
	t.Helper()
	list, err := rt.List(testutil.Context(t, testutil.WaitShort))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	i := slices.IndexFunc(list, func(in runtime.Instance) bool { return in.SessionID == id })
	if i < 0 {
		return runtime.Instance{}, false
	}
	return list[i], true
}

func samePlacement(a, b runtime.Placement) bool {
	return a.Node == b.Node && a.Handle == b.Handle && slices.Equal(a.Devices, b.Devices)
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func sameSet(a, b []string) bool {
	return len(a) == len(b) && len(intersect(a, b)) == len(a)
}

func sameCapacity(got, want []runtime.Capacity) bool {
	key := func(c runtime.Capacity) string { return fmt.Sprintf("%s@%s=%d", c.Type, c.Region, c.Total) }
	g, w := make([]string, len(got)), make([]string, len(want))
	for i, c := range got {
		g[i] = key(c)
	}
	for i, c := range want {
		w[i] = key(c)
	}
	slices.Sort(g)
	slices.Sort(w)
	return slices.Equal(g, w)
}

func listed(t *testing.T, rt runtime.Runtime, id string) bool {
	t.Helper()
	_, ok := instance(t, rt, id)
	return ok
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
