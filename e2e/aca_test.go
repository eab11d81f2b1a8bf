//go:build linux && !agentonly

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/devgpu/devgpu/internal/image/imagetest"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/acafake"
	"github.com/devgpu/devgpu/sdk"
)

// The aca tests' Azure: one subscription, resource group and managed
// environment with a T4 workload profile, served by acafake, which runs
// each job's agent as a process of this host.
const (
	acaBackend      = "azure"
	acaSubscription = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
	acaGroup        = "devgpu-e2e"
	acaEnvironment  = "gpu-env"
	acaT4Profile    = "Consumption-GPU-NC8as-T4"
	acaRegion       = "swedencentral" // acafake's default location
	// acaPullIdentity is the user-assigned identity the jobs pull with
	// ("system" is refused: a new job's system-assigned identity has no
	// AcrPull at its first pull).
	acaPullIdentity = "/subscriptions/" + acaSubscription + "/resourceGroups/" + acaGroup + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/devgpu-pull"
)

// acaEnv is a devgpu installation whose one backend is Azure Container
// Apps, faked by fake.
type acaEnv struct {
	*env
	fake *acafake.Fake
}

// newACAFake starts the fake with a T4 profile whose Azure quota is 2
// GPUs, and seeds its registry with a busybox image (the host's static
// busybox, as the oci tests' sessions use) as the sessions' base image.
// It returns the image's reference.
func newACAFake(t *testing.T) (*acafake.Fake, string) {
	t.Helper()
	f, err := acafake.New(acafake.Options{
		SubscriptionID: acaSubscription, ResourceGroup: acaGroup, Environment: acaEnvironment,
		Profiles: map[string]string{"gpu-t4": acaT4Profile},
		GPUQuota: map[string]int{acaT4Profile: 2},
		Dir:      testutil.ShortTempDir(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Registered first, so run last: after the servers stopped.
	t.Cleanup(f.Close)
	ref := f.Registry() + "/base/busybox:1"
	if err := f.Push(ref, imagetest.BusyboxImage(t)); err != nil {
		t.Fatal(err)
	}
	return f, ref
}

// newACAEnv starts `devgpu server --dev` with an aca backend on f whose
// quota is quota T4s. installation, when not "", is written as the
// installation's id before the server first starts. The server listens on
// this host's own address, so --dev serves TLS with a CA of its own, which
// the agents trust by the backend's default link CA; they dial it at
// link_url, on this host.
func newACAEnv(t *testing.T, f *acafake.Fake, base string, quota int, installation string) *acaEnv {
	t.Helper()
	e := &env{t: t, bin: testutil.Binary(t), dir: testutil.ShortTempDir(t), addr: freeAddrOn(t, hostAddress(t))}
	data := filepath.Join(e.dir, "data")
	if installation != "" {
		if err := os.MkdirAll(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, "installation"), []byte(installation+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	caFile := filepath.Join(e.dir, "azure-ca.pem")
	if err := os.WriteFile(caFile, f.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	aca := map[string]any{
		"subscription_id":   acaSubscription,
		"resource_group":    acaGroup,
		"environment":       acaEnvironment,
		"gpu_types":         map[string]string{"t4": "gpu-t4"},
		"quota":             map[string]int{"t4": quota},
		"registry":          f.Registry(),
		"repository":        "devgpu/sessions",
		"registry_identity": acaPullIdentity,
		"agent_binary":      testutil.StaticBinary(t),
		"image":             base,
		"link_url":          "https://" + e.addr,
		"credential":        map[string]string{"kind": "managed-identity"},
		"cloud":             map[string]string{"resource_manager": f.ARMEndpoint(), "ca_file": caFile},
	}
	cfg, err := json.Marshal(map[string]any{"backends": []map[string]any{{"name": acaBackend, "runtime": "aca", "aca": aca}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.dir, "server.json")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	endpoint, header := f.IdentityEndpoint()
	e.serverEnv = []string{"IDENTITY_ENDPOINT=" + endpoint, "IDENTITY_HEADER=" + header}
	e.args = []string{"--dev", "--data", data, "--listen", e.addr, "--config", path,
		"--liveness-interval", "200ms", "--ping-interval", "1s", "--log-level", "debug"}
	e.startServerWith(e.args)
	t.Cleanup(func() {
		e.endSessions()
		e.stopServer(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("server log:\n%s", e.log.String())
		}
	})
	return &acaEnv{env: e, fake: f}
}

// hostAddress is an IPv4 address of this host other than loopback: a
// server on loopback serves plain HTTP, and agents link over TLS only.
func hostAddress(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() && !ip.IP.IsLinkLocalUnicast() {
			return ip.IP.String()
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("the aca tests need an IPv4 address of this host other than loopback")
	}
	t.Skip("no IPv4 address of this host other than loopback")
	return ""
}

// job is the name of the Container Apps job of session id: the aca
// runtime's naming, "dg-" and 24 hex digits of a hash of the installation,
// the backend and the session (internal/runtime/aca/names.go).
func (a *acaEnv) job(id string) string {
	a.t.Helper()
	b, err := os.ReadFile(filepath.Join(a.dir, "data", "installation"))
	if err != nil {
		a.t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(string(b)) + "\x00" + acaBackend + "\x00" + id))
	return "dg-" + hex.EncodeToString(sum[:12])
}

// waitJobGone waits until the job of session id has no execution running
// and was deleted at the fake.
func (a *acaEnv) waitJobGone(id string) {
	a.t.Helper()
	job := a.job(id)
	testutil.Eventually(a.t, testutil.WaitLong, "job "+job+" of session "+id+" to be stopped and deleted", func() bool {
		return !slices.Contains(a.fake.Running(), job) && a.fake.Requests()["DELETE /providers/Microsoft.App/jobs/"+job] > 0
	})
}

// allSessions lists every user's sessions, ended ones too.
func (a *acaEnv) allSessions() []sdk.Session {
	a.t.Helper()
	r := a.cli("sessions", "list", "--all", "--all-users", "--json")
	var all []sdk.Session
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil {
		a.t.Fatalf("sessions list --json: %v\n%s", err, r.stdout)
	}
	return all
}

// devgpu run and shell on Azure Container Apps (faked): the session's
// env and GPU, the exit status, a shell detached and reattached within
// the grace, ended closed with its job deleted, usage to the second, and
// Azure's quota refusal in one sentence.
func TestACASessions(t *testing.T) {
	t.Parallel()
	f, base := newACAFake(t)
	// The backend's own quota (3) is above Azure's (2): the third session
	// meets Azure's refusal, not admission's.
	e := newACAEnv(t, f, base, 3, "")

	if r := e.cli("gpus"); r.code != 0 || !strings.Contains(r.stdout, "t4") || !strings.Contains(r.stdout, acaRegion) {
		t.Fatalf("devgpu gpus on the aca backend: %+v", r)
	}

	r := e.cli("run", "--", `echo "$DEVGPU_SESSION_ID $CUDA_VISIBLE_DEVICES"; exit 3`)
	if r.code != 3 {
		t.Fatalf("run exited %d, want 3: %+v", r.code, r)
	}
	all := e.sessions()
	if len(all) != 1 {
		t.Fatalf("sessions after one run: %+v", all)
	}
	s := all[0]
	if s.Backend != acaBackend || s.Region != acaRegion || len(s.GPUs) != 1 || s.GPUs[0] == "" {
		t.Fatalf("session placement = backend %q region %q gpus %v; want %s in %s with the one GPU of its replica", s.Backend, s.Region, s.GPUs, acaBackend, acaRegion)
	}
	if want := s.ID + " " + s.GPUs[0]; strings.TrimSpace(r.stdout) != want {
		t.Fatalf("run printed %q, want %q (its session and its replica's GPU)", r.stdout, want)
	}
	e.waitSession(s.ID, testutil.WaitLong, "to end", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	e.waitJobGone(s.ID)

	// A shell whose client vanishes is reattached within the grace, in the
	// same replica (its files are there).
	e.admin("project", "update", "default", "--detach-grace", "2m")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	if got := f.Running(); !slices.Equal(got, []string{e.job(id)}) {
		t.Fatalf("jobs running at the fake: %v, want the shell's %s", got, e.job(id))
	}
	// The GPU the session records is the one the platform gave its replica.
	if env, gpus := f.Env(e.job(id)), e.session(id).GPUs; len(gpus) != 1 || env["NVIDIA_VISIBLE_DEVICES"] != gpus[0] {
		t.Fatalf("the replica was given NVIDIA_VISIBLE_DEVICES=%q, the session records GPUs %v", env["NVIDIA_VISIBLE_DEVICES"], gpus)
	}
	tm.send("echo kept-in-the-replica > ~/here.txt && echo wro''te\r")
	tm.expect("wrote")
	_ = tm.cmd.Process.Kill()
	tm.wait()
	if s := e.waitSession(id, testutil.WaitMedium, "to lose its attachment", func(s sdk.Session) bool { return s.Attachments == 0 }); s.State != sdk.StateRunning {
		t.Fatalf("session after its client vanished = %+v, want running within the grace", s)
	}
	again := e.terminal("shell", "--attach", id)
	if got := again.sessionID(); got != id {
		t.Fatalf("attached to %s, want %s", got, id)
	}
	again.send("echo back-$DEVGPU_SESSION_ID-$(cat ~/here.txt)\r")
	again.expect("back-" + id + "-kept-in-the-replica")

	again.send("exit 4\r")
	if code := again.wait(); code != 4 {
		t.Fatalf("devgpu shell exited %d, want 4", code)
	}
	e.waitSession(id, testutil.WaitLong, "to end closed", func(s sdk.Session) bool {
		return s.State == sdk.StateEnded && s.EndReason == sdk.ReasonClosed
	})
	e.waitJobGone(id)
	testutil.Eventually(t, testutil.WaitLong, "no job to run at the fake", func() bool { return len(f.Running()) == 0 })

	// Usage to the second: the ledger bills what the sessions lived, from
	// running to ended.
	var lived float64
	for _, s := range e.sessions() {
		if s.Active() {
			t.Fatalf("session %s still %s", s.ID, s.State)
		}
		if s.StartedAt != nil && s.EndedAt != nil {
			lived += s.EndedAt.Sub(*s.StartedAt).Seconds()
		}
	}
	if lived == 0 {
		t.Fatal("no session ran")
	}
	e.wantBilled(lived, "the aca sessions' lives, started_at to ended_at")

	// Azure's quota: two T4s run; a third passes admission (the backend's
	// quota is 3) and Azure refuses it. The server logs Azure's reason,
	// and the CLI says it in one sentence naming the quota.
	var holders []*term
	for range 2 {
		tm := e.terminal("shell")
		tm.sessionID()
		tm.ready()
		holders = append(holders, tm)
	}
	r = e.cli("run", "--", "true")
	for _, tm := range holders {
		tm.send("exit\r")
		tm.wait()
	}
	if r.code != 255 || !strings.Contains(e.log.String(), "Managed Environment Consumption T4 Gpus") {
		t.Fatalf("a third T4 past Azure's quota of 2: %+v, and the server log does not name the quota", r)
	}
	if !strings.Contains(r.stderr, "Managed Environment Consumption T4 Gpus") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Fatalf("the CLI's refusal of a T4 past Azure's quota does not name the quota in one sentence:\n%s", r.stderr)
	}
}

// A server killed and started again on the same data finds its running
// aca session (the shell reconnects and goes on in the same PTY), a job of
// this installation and backend that its store does not know is stopped
// when a server starts, and a warm pool keeps a ready session on Azure
// that the next shell claims.
func TestACAReconcileAndWarmPool(t *testing.T) {
	t.Parallel()
	f, base := newACAFake(t)
	const installation = "e2eacainstallation0001"

	// Another server with the same installation id and backend name but a
	// store of its own leaves a running session behind: its job carries
	// this installation's tags, and no store of ours knows it.
	other := newACAEnv(t, f, base, 2, installation)
	// A first session pushes the session image (the agent's 47 MB layer
	// onto the base) into the fake registry, which a loaded machine takes
	// longer for than a terminal's wait: run it where the CLI's longer
	// wait applies, so the shell below only finds the image there.
	if r := other.cli("run", "--", "true"); r.code != 0 {
		t.Fatalf("a first run on the aca backend: %+v", r)
	}
	orphan := other.terminal("shell")
	orphanID := orphan.sessionID()
	orphan.ready()
	orphanJob := other.job(orphanID)
	other.stopServer(syscall.SIGKILL)
	if !slices.Contains(f.Running(), orphanJob) {
		t.Fatalf("the orphan's job %s is not running after its server was killed: %v", orphanJob, f.Running())
	}

	e := newACAEnv(t, f, base, 2, installation)
	testutil.Eventually(t, testutil.WaitLong, "the orphan's job to be stopped and deleted", func() bool {
		return !slices.Contains(f.Running(), orphanJob) && f.Requests()["DELETE /providers/Microsoft.App/jobs/"+orphanJob] > 0
	})

	kept := e.terminal("shell")
	keptID := kept.sessionID()
	kept.ready()
	kept.send("export MARK=same-pty-$$\r")
	e.stopServer(syscall.SIGKILL)
	kept.expect("reconnecting to session " + keptID)
	e.startServerWith(e.args)
	if s := e.session(keptID); s.State != sdk.StateRunning || s.Backend != acaBackend {
		t.Fatalf("after a restart the session is %s on %q, want running on %s", s.State, s.Backend, acaBackend)
	}
	kept.send("echo still-here-$DEVGPU_SESSION_ID-$MARK\r")
	kept.expect("still-here-" + keptID + "-same-pty-")
	if !slices.Contains(f.Running(), e.job(keptID)) {
		t.Fatalf("the kept session's job %s is not running after the restart: %v", e.job(keptID), f.Running())
	}
	kept.send("exit\r")
	kept.wait()
	e.waitSession(keptID, testutil.WaitLong, "to end closed", func(s sdk.Session) bool {
		return s.State == sdk.StateEnded && s.EndReason == sdk.ReasonClosed
	})
	e.waitJobGone(keptID)

	// A warm pool of one on the aca backend: a ready session, which the
	// next shell claims.
	e.admin("pool", "set", "default", "--gpu", "t4", "--size", "1")
	var ready sdk.Session
	testutil.Eventually(t, testutil.WaitLong, "a ready session of the warm pool", func() bool {
		for _, s := range e.allSessions() {
			if s.User == "warm-pool" && s.State == sdk.StateRunning {
				ready = s
				return true
			}
		}
		return false
	})
	if ready.Backend != acaBackend || !slices.Contains(f.Running(), e.job(ready.ID)) {
		t.Fatalf("the ready session %s is on %q with jobs %v running, want its job on %s", ready.ID, ready.Backend, f.Running(), acaBackend)
	}
	claim := e.terminal("shell")
	if got := claim.sessionID(); got != ready.ID {
		t.Fatalf("the shell got session %s, want the pool's ready %s", got, ready.ID)
	}
	claim.send("echo claimed-$DEVGPU_SESSION_ID\r")
	claim.expect("claimed-" + ready.ID)
	claim.send("exit\r")
	claim.wait()
	e.waitSession(ready.ID, testutil.WaitLong, "(the claimed one) to end closed", func(s sdk.Session) bool {
		return s.State == sdk.StateEnded && s.EndReason == sdk.ReasonClosed
	})
	e.waitJobGone(ready.ID)
	e.admin("pool", "set", "default", "--gpu", "t4", "--size", "0")
}
