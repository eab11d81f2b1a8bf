//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/kcluster"
	"github.com/devgpu/devgpu/sdk"
)

// kubeBackend is the backend name the kube tests give the cluster.
const kubeBackend = "cluster"

// newKubeEnv starts a devgpu server whose sessions run as Pods on the real
// test cluster, in namespace ns. The server listens on the node's address
// (Pods dial it back there), so --dev serves TLS with its own CA, which
// the agents trust through the backend's default link CA. host, when not
// empty, adds this host's local runtime as a first backend named "host"
// with that simulated inventory.
func newKubeEnv(t *testing.T, c *kcluster.Cluster, ns, host string) *env {
	t.Helper()
	e := &env{t: t, bin: testutil.Binary(t), dir: testutil.ShortTempDir(t), addr: freeAddrOn(t, c.NodeIP)}
	kube := map[string]any{
		"kubeconfig":  c.Kubeconfig,
		"namespace":   ns,
		"gpu_types":   map[string]string{kcluster.GPUProduct: "t4"},
		"agent_image": c.AgentImage,
		"image":       c.SessionImage,
		"link_url":    "https://" + e.addr,
	}
	backends := []map[string]any{{"name": kubeBackend, "runtime": "kube", "kube": kube}}
	args := []string{"--dev", "--data", filepath.Join(e.dir, "data"), "--listen", e.addr,
		"--liveness-interval", "200ms", "--ping-interval", "1s", "--log-level", "debug"}
	if host != "" {
		backends = append([]map[string]any{{"name": "host", "runtime": "local"}}, backends...)
		args = append(args, "--gpus", host, "--insecure-local-runtime")
	}
	cfg, err := json.Marshal(map[string]any{"backends": backends})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.dir, "server.json")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	e.args = append(args, "--config", path)
	e.startServerWith(e.args)
	t.Cleanup(func() {
		e.endSessions()
		e.stopServer(syscall.SIGTERM)
		e.killSessions()
		if t.Failed() {
			t.Logf("server log:\n%s", e.log.String())
		}
	})
	return e
}

func freeAddrOn(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// podOf is the Pod the kube runtime runs a session in.
func podOf(id string) string { return "devgpu-" + id }

var simGPU = regexp.MustCompile(`^GPU-sim-\d+$`)

// devgpu shell and run on the kube runtime: the GPU comes from the device
// plugin, and a shell behaves as on any runtime (exit status, resize,
// Ctrl-C), with cp, port-forward and OpenSSH through config-ssh.
func TestKubeShellAndRun(t *testing.T) {
	c := kcluster.Get(t)
	ns := c.Namespace(t)
	e := newKubeEnv(t, c, ns, "")

	if r := e.cli("gpus"); r.code != 0 || !strings.Contains(r.stdout, "t4") || !strings.Contains(r.stdout, kcluster.Region) {
		t.Fatalf("devgpu gpus on the cluster: %+v", r)
	}

	r := e.cli("run", "--", `echo "gpu=$CUDA_VISIBLE_DEVICES nv=$NVIDIA_VISIBLE_DEVICES"; exit 3`)
	if r.code != 3 {
		t.Fatalf("run exited %d, want 3: %+v", r.code, r)
	}
	all := e.sessions()
	if len(all) != 1 {
		t.Fatalf("sessions after one run: %+v", all)
	}
	s := all[0]
	if s.Backend != kubeBackend || s.Node != c.Node || len(s.GPUs) != 1 || !simGPU.MatchString(s.GPUs[0]) {
		t.Fatalf("session placement = backend %q node %q gpus %v; want %s on %s with one device-plugin GPU", s.Backend, s.Node, s.GPUs, kubeBackend, c.Node)
	}
	if want := fmt.Sprintf("gpu=%s nv=%s", s.GPUs[0], s.GPUs[0]); strings.TrimSpace(r.stdout) != want {
		t.Fatalf("run printed %q, want %q (the device plugin's GPU)", r.stdout, want)
	}
	e.waitSession(s.ID, testutil.WaitLong, "to end and its Pod to go", func(s sdk.Session) bool { return s.State == sdk.StateEnded })

	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	tm.send("stty size\r")
	tm.expect("24 80")
	tm.resize(40, 132)
	testutil.Eventually(t, testutil.WaitMedium, "the shell to see the terminal resized to 40x132", func() bool {
		tm.send("stty size; echo SI''ZED\r")
		return strings.Contains(tm.expect("SIZED"), "40 132")
	})
	// The Pod's processes are this host's processes in other namespaces,
	// so the test can see when the sleep holds the terminal.
	secs := strconv.FormatInt(1e6+time.Now().UnixNano()%1e6, 10)
	tm.send("sleep " + secs + "\r")
	testutil.Eventually(t, testutil.WaitShort, "sleep "+secs+" to be the terminal's foreground job", func() bool {
		pids := testutil.ProcessesWith("sleep\x00" + secs + "\x00")
		return len(pids) == 1 && testutil.InForeground(pids[0])
	})
	tm.send("\x03")
	tm.send("echo status-$?\r")
	tm.expect("status-130")

	// cp both ways.
	dir := t.TempDir()
	up := filepath.Join(dir, "up.bin")
	sum := writeRandom(t, up, 4<<20, 7)
	if r := e.cli("cp", up, id+":/tmp/up.bin"); r.code != 0 {
		t.Fatalf("cp upload: %+v", r)
	}
	down := filepath.Join(dir, "down.bin")
	if r := e.cli("cp", id+":/tmp/up.bin", down); r.code != 0 {
		t.Fatalf("cp download: %+v", r)
	}
	if got := fileSum(t, down); got != sum {
		t.Fatalf("cp round trip: sha256 %s, want %s", got, sum)
	}

	// port-forward to busybox httpd inside the Pod.
	tm.send("mkdir -p /tmp/www && echo served > /tmp/www/index.html && httpd -p 8080 -h /tmp/www; echo HT''TPD\r")
	tm.expect("HTTPD")
	pr, pw := io.Pipe()
	fwd := e.startBackground(pw, e.bin, "port-forward", id, "0:8080")
	defer pw.Close()
	url := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		var out string
		for {
			n, err := pr.Read(buf)
			out += string(buf[:n])
			if m := regexp.MustCompile(`http://127\.0\.0\.1:\d+`).FindString(out); m != "" {
				url <- m
				_, _ = io.Copy(io.Discard, pr)
				return
			}
			if err != nil {
				close(url)
				return
			}
		}
	}()
	local, ok := <-url
	if !ok {
		t.Fatal("port-forward printed no local URL")
	}
	var body string
	testutil.Eventually(t, testutil.WaitMedium, "HTTP through port-forward into the Pod", func() bool {
		var err error
		body, err = httpGet(local + "/")
		return err == nil
	})
	if body != "served\n" {
		t.Fatalf("port-forward body %q", body)
	}
	_ = fwd.Process.Signal(os.Interrupt)
	if err := e.waitExit(fwd); err != nil {
		t.Fatalf("port-forward after Ctrl-C: %v", err)
	}

	// OpenSSH through config-ssh: a new dedicated session, on the cluster.
	cfg := e.sshConfig()
	out := e.command("ssh", "-F", cfg, "devgpu.default", "echo gpu=$CUDA_VISIBLE_DEVICES")
	if !regexp.MustCompile(`^gpu=GPU-sim-\d+$`).MatchString(strings.TrimSpace(out)) {
		t.Fatalf("ssh printed %q, want the session's GPU", out)
	}

	tm.send("exit 4\r")
	if code := tm.wait(); code != 4 {
		t.Fatalf("devgpu shell exited %d, want 4", code)
	}
	e.waitSession(id, testutil.WaitLong, "to end closed", func(s sdk.Session) bool {
		return s.State == sdk.StateEnded && s.EndReason == sdk.ReasonClosed
	})
	testutil.Eventually(t, testutil.WaitLong, "the ended session's Pod to be deleted", func() bool {
		_, err := c.Client.CoreV1().Pods(ns).Get(testutil.Context(t, testutil.WaitShort), podOf(id), metav1.GetOptions{})
		return err != nil
	})
}

// Four sessions on the four simulated GPUs get four distinct devices; a
// fifth is refused by admission, or waits with --wait; a GPU taken behind
// devgpu's back makes a start wait with the scheduler's reason; a Pod
// deleted behind its back ends the session lost; a restarted server
// reconciles; another installation on the same cluster touches nothing.
func TestKubeCapacityLossAndInstallations(t *testing.T) {
	c := kcluster.Get(t)
	ns := c.Namespace(t)
	e := newKubeEnv(t, c, ns, "")

	var holders []*term
	devices := map[string]bool{}
	for range c.GPUs {
		tm := e.terminal("shell")
		id := tm.sessionID()
		tm.ready()
		holders = append(holders, tm)
		s := e.session(id)
		if len(s.GPUs) != 1 || devices[s.GPUs[0]] {
			t.Fatalf("session %s got %v; devices so far %v", id, s.GPUs, devices)
		}
		devices[s.GPUs[0]] = true
	}
	if r := e.cli("run", "--", "true"); r.code != 255 || !strings.Contains(r.stderr, "t4") {
		t.Fatalf("a fifth session with every GPU taken: %+v", r)
	}
	waiter := e.background("run", "--wait=2m", "--", "echo fifth $CUDA_VISIBLE_DEVICES")
	waiter.waitStderr(t, "queued, position 1")
	holders[0].send("exit\r")
	holders[0].wait()
	if code := waiter.wait(t); code != 0 || !strings.HasPrefix(waiter.stdout.String(), "fifth GPU-sim-") {
		t.Fatalf("the waiter: exit %d, stdout %q, stderr %q", code, waiter.stdout.String(), waiter.stderr.String())
	}
	for _, tm := range holders[1:] {
		tm.send("exit\r")
		tm.wait()
	}
	testutil.Eventually(t, testutil.WaitLong, "every session Pod to be gone", func() bool {
		pods, err := c.Client.CoreV1().Pods(ns).List(testutil.Context(t, testutil.WaitShort), metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0
	})

	// A Pod outside devgpu takes every GPU: devgpu's admission still sees
	// them free, so the start waits on the scheduler, and says why.
	hog := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hog"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "hog", Image: c.SessionImage, Command: []string{"sleep", "3600"},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
					kcluster.GPUResource: *resource.NewQuantity(int64(c.GPUs), resource.DecimalSI)}},
			}},
		},
	}
	ctx := testutil.Context(t, testutil.WaitLong)
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, hog, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitPod(t, ns, "hog", testutil.WaitLong, func(p *corev1.Pod) (bool, error) { return p.Status.Phase == corev1.PodRunning, nil })
	// The terminal shows the start's progress; wide enough for the
	// scheduler's whole sentence.
	pending := e.terminal("run", "--", "echo scheduled")
	pending.resize(40, 250)
	pending.expect("waiting for a free t4 in " + kcluster.Region + ": 0/1 nodes are available: 1 Insufficient nvidia.com/gpu")
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, "hog", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	pending.expect("scheduled")
	if code := pending.wait(); code != 0 {
		t.Fatalf("the run that waited on the scheduler exited %d:\n%s", code, pending.output())
	}

	// A Pod deleted behind devgpu's back: the session ends lost.
	lost := e.terminal("shell")
	lostID := lost.sessionID()
	lost.ready()
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, podOf(lostID), metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	e.waitSession(lostID, testutil.WaitLong, "to end lost", func(s sdk.Session) bool {
		return s.State == sdk.StateEnded && s.EndReason == sdk.ReasonLost
	})
	lost.wait()

	// A server killed and started again keeps its running session, and
	// the shell whose connection went with the server reconnects to the
	// new one and goes on in the same PTY.
	kept := e.terminal("shell")
	keptID := kept.sessionID()
	kept.ready()
	kept.send("export MARK=same-pty-$$\r")
	e.stopServer(syscall.SIGKILL)
	kept.expect("reconnecting to session " + keptID)
	e.startServerWith(e.args)
	if s := e.session(keptID); s.State != sdk.StateRunning {
		t.Fatalf("after a restart the session is %s, want running", s.State)
	}
	kept.send("echo still-here-$DEVGPU_SESSION_ID-$MARK\r")
	kept.expect("still-here-" + keptID + "-same-pty-")

	// Another installation on the same cluster and namespace: its server
	// starts, reconciles and runs a session, and the first's Pod stays.
	other := newKubeEnv(t, c, ns, "")
	if r := other.cli("run", "--", "true"); r.code != 0 {
		t.Fatalf("a run on the second installation: %+v", r)
	}
	if got := other.sessions(); len(got) != 1 {
		t.Fatalf("the second installation lists %d sessions, want only its own", len(got))
	}
	other.stopServer(syscall.SIGTERM)
	if _, err := c.Client.CoreV1().Pods(ns).Get(ctx, podOf(keptID), metav1.GetOptions{}); err != nil {
		t.Fatalf("the first installation's Pod after the second's server came and went: %v", err)
	}
	if s := e.session(keptID); s.State != sdk.StateRunning {
		t.Fatalf("the first installation's session is %s after the second's reconcile, want running", s.State)
	}
	kept.send("exit\r")
	kept.wait()
}

// One server, two backends: this host's runtime offers a100 in region
// local, the cluster t4 in its region. Placement follows the type, and the
// project cap and org quota count both.
func TestKubeAndHostBackends(t *testing.T) {
	c := kcluster.Get(t)
	ns := c.Namespace(t)
	e := newKubeEnv(t, c, ns, "a100:2")

	r := e.cli("gpus")
	if r.code != 0 || !strings.Contains(r.stdout, "a100") || !strings.Contains(r.stdout, "t4") {
		t.Fatalf("gpus over two backends: %+v", r)
	}
	onHost := e.terminal("shell", "--gpu", "a100")
	hostID := onHost.sessionID()
	onHost.ready()
	onCluster := e.terminal("shell", "--gpu", "t4")
	clusterID := onCluster.sessionID()
	onCluster.ready()
	hostname, _ := os.Hostname()
	if s := e.session(hostID); s.Backend != "host" || s.Region != "local" || !strings.EqualFold(s.Node, hostname) {
		t.Fatalf("an a100 session placed on backend %q region %q node %q, want host/local/%s", s.Backend, s.Region, s.Node, hostname)
	}
	if s := e.session(clusterID); s.Backend != kubeBackend || s.Region != kcluster.Region || s.Node != c.Node {
		t.Fatalf("a t4 session placed on backend %q region %q node %q, want %s/%s/%s", s.Backend, s.Region, s.Node, kubeBackend, kcluster.Region, c.Node)
	}

	// The project cap counts both backends' sessions.
	e.admin("project", "update", "default", "--max-gpus", "2")
	if r := e.cli("run", "--gpu", "t4", "--", "true"); r.code != 255 || !strings.Contains(r.stderr, "2 of its 2") {
		t.Fatalf("a third GPU past a project cap of 2 over two backends: %+v", r)
	}
	// The org quota of a type counts across backends too: a100 has one
	// in use, a quota of one refuses the second.
	e.admin("project", "update", "default", "--max-gpus", "8")
	e.admin("org", "update", "--quota", "a100=1")
	if r := e.cli("run", "--gpu", "a100", "--", "true"); r.code != 255 || !strings.Contains(r.stderr, "quota") {
		t.Fatalf("a second a100 past an org quota of 1: %+v", r)
	}
	for _, tm := range []*term{onHost, onCluster} {
		tm.send("exit\r")
		tm.wait()
	}
	testutil.Eventually(t, testutil.WaitLong, "both sessions to end", func() bool {
		return !slices.ContainsFunc(e.sessions(), func(s sdk.Session) bool { return s.Active() })
	})
}
