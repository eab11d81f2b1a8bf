package e2e

import (
	"fmt"
	"syscall"

	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/devgpu/devgpu/internal/image/imagetest"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// newOCIEnv starts a server on the oci runtime, with a busybox image in an
// in-process registry as the default image, and its own bridge and subnet.
// extraOCI are more `"key": value` settings of the oci runtime.
func newOCIEnv(t *testing.T, extraOCI ...string) (*env, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the oci runtime tests need root")
		}
		t.Skip("the oci runtime tests need root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("runc is missing; .ci/run installs it")
		}
		t.Skip("runc is not installed")
	}
	ref := imagetest.Push(t, imagetest.Registry(t)+"/test/busybox:1", imagetest.BusyboxImage(t))
	n := freeOCINetwork(t)
	// Runs after the server's cleanup (cleanups run last-in, first-out):
	// the bridge and its nftables table are what a stopped server keeps for
	// its next start.
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", fmt.Sprintf("dge%d", n)).Run()
		deleteBridgeTable(fmt.Sprintf("dge%d", n))
	})
	cfg := filepath.Join(t.TempDir(), "server.json")
	extra := ""
	for _, kv := range extraOCI {
		extra += ", " + kv
	}
	config := fmt.Sprintf(`{"runtime": "oci", "oci": {"agent_binary": %q, "default_image": %q, "bridge": "dge%d", "subnet": "10.%d.0.0/24", "disk_pool": "2GB", "writable_layer": "256MB"%s}}`,
		testutil.StaticBinary(t), ref, n, 40+n, extra)
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return newEnv(t, "t4:2", "--config", cfg), ref
}

// ociNetworks are the bridge numbers this test process has handed out.
var ociNetworks struct {
	sync.Mutex
	taken map[int]bool
}

// freeOCINetwork picks a number n for a server's bridge dge<n> and subnet
// 10.<40+n>.0.0/24 that no other test of this process took and no
// interface of the host uses: a server refuses a subnet that is in use.
func freeOCINetwork(t *testing.T) int {
	t.Helper()
	ociNetworks.Lock()
	defer ociNetworks.Unlock()
	if ociNetworks.taken == nil {
		ociNetworks.taken = map[int]bool{}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	inUse := map[int]bool{}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && ip.IP.To4()[0] == 10 {
			inUse[int(ip.IP.To4()[1])-40] = true
		}
	}
	for _, n := range rand.Perm(200) {
		if !ociNetworks.taken[n] && !inUse[n] {
			if _, err := net.InterfaceByName(fmt.Sprintf("dge%d", n)); err == nil {
				continue // an earlier run's bridge
			}
			ociNetworks.taken[n] = true
			return n
		}
	}
	t.Fatal("no free bridge number for an oci test server")
	return 0
}

// Sessions on the oci runtime run in their own containers: their own
// hostname, process tree and GPU device, from the image.
func TestOCISessions(t *testing.T) {
	t.Parallel()
	e, ref := newOCIEnv(t)
	e.admin("project", "update", "default", "--egress", "none")

	holder := e.terminal("shell")
	idA := holder.sessionID()
	holder.ready()
	holder.send("sleep 1234 &\r")

	r := e.cli("run", "--", `hostname; ls /dev | grep devgpu; echo gpus=$CUDA_VISIBLE_DEVICES; ps; cat /proc/net/dev | grep -c :`)
	if r.code != 0 {
		t.Fatalf("run in a container: %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	idB := lines[0]
	if idB == idA || len(idB) != len(idA) {
		t.Fatalf("hostname %q, want the new session's id", idB)
	}
	if !strings.Contains(r.stdout, "devgpu-GPU-sim-t4-") || strings.Count(r.stdout, "devgpu-GPU-sim") != 1 {
		t.Fatalf("the session must see exactly its own GPU device:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout, "sleep 1234") {
		t.Fatalf("a session sees another session's processes:\n%s", r.stdout)
	}
	if got := lines[len(lines)-1]; got != "1" {
		t.Fatalf("egress none: %s network interfaces, want only lo", got)
	}
	holder.send("ps | grep -c 'sleep 123[4]'\r")
	holder.expect("1")

	// The catalog names the image; bring-your-own needs an allowed registry.
	e.admin("image", "add", "bb", ref)
	if r := e.cli("run", "--image", "bb", "--", "cat", "/etc/passwd"); r.code != 0 || !strings.Contains(r.stdout, "root:") {
		t.Fatalf("run --image bb: %+v", r)
	}
	if r := e.cli("run", "--image", "ghcr.io/acme/own:1", "--", "true"); r.code != 255 || !strings.Contains(r.stderr, "images from ghcr.io are not allowed") {
		t.Fatalf("bring-your-own from a registry not allowed: %+v", r)
	}

	// A slow pull shows its progress on a terminal. The registry holds the
	// image's layers (not its manifest or config, read before the pull
	// counts bytes) back until the terminal has shown the pull.
	var (
		gated   atomic.Bool
		held    = map[string]bool{} // layer digests; written before gated
		holding atomic.Int32        // layer requests held back
		release = make(chan struct{})
		once    sync.Once
	)
	letGo := func() { once.Do(func() { close(release) }) }
	slow := imagetest.Registry(t, imagetest.WithMiddleware(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if gated.Load() && r.Method == http.MethodGet && held[path.Base(r.URL.Path)] {
				holding.Add(1)
				<-release
			}
			h.ServeHTTP(w, r)
		})
	}))
	t.Cleanup(letGo) // before the registry's own cleanup, which waits for its requests
	withFile, err := mutate.AppendLayers(imagetest.BusyboxImage(t), imagetest.Layer(t, imagetest.File("etc/team", "own")))
	if err != nil {
		t.Fatal(err)
	}
	own := imagetest.Push(t, slow+"/team/own:1", withFile)
	e.admin("org", "update", "--registries", slow)
	layers, err := withFile.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		held[d.String()] = true
	}
	gated.Store(true)
	tm := e.terminal("run", "--image", own, "--", "echo", "pulled")
	tm.expect("pulling " + slow + "/team/own") // the status line fits the terminal: the digest may be cut
	testutil.Eventually(t, testutil.WaitMedium, "the pull to ask for a layer", func() bool { return holding.Load() > 0 })
	letGo()
	tm.expect("pulled")
	if code := tm.wait(); code != 0 {
		t.Fatalf("run with a pulled image exited %d", code)
	}
}

// A control plane killed with SIGKILL and started again leaves no
// container, overlay mount or network namespace of the oci runtime behind
// once its sessions have ended.
func TestOCIServerKill(t *testing.T) {
	t.Parallel()
	e, _ := newOCIEnv(t)
	e.admin("project", "update", "default", "--detach-grace", "2s", "--egress", "all")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	data := filepath.Join(e.dir, "data")
	leftovers := func() []string {
		var out []string
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		for _, line := range strings.Split(string(mounts), "\n") {
			// The disk pool stays mounted for the next start.
			if strings.Contains(line, data) && !strings.Contains(line, " "+filepath.Join(data, "oci", "disk")+" ") {
				out = append(out, "mount: "+line)
			}
		}
		if ns, _ := os.ReadDir(filepath.Join(data, "netns")); len(ns) > 0 {
			for _, n := range ns {
				if n.Name() != "ipam.json" {
					out = append(out, "netns: "+n.Name())
				}
			}
		}
		list, _ := exec.Command("runc", "--root", filepath.Join(data, "oci", "runc"), "list", "-q").Output()
		for _, c := range strings.Fields(string(list)) {
			out = append(out, "container: "+c)
		}
		return out
	}
	if len(leftovers()) == 0 {
		t.Fatal("the running session shows no container, mount or namespace: the check checks nothing")
	}
	e.stopServer(syscall.SIGKILL)
	tm.wait()
	e.startServer()
	e.waitSession(id, testutil.WaitMedium, "to end after the restart", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	testutil.Eventually(t, testutil.WaitShort, "nothing of the session left", func() bool { return len(leftovers()) == 0 })
}
