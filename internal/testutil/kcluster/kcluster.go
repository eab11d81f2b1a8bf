//go:build linux

package kcluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/devgpu/devgpu/internal/agentimage"
	"github.com/devgpu/devgpu/internal/testutil"
)

const (
	// LockPath is the host-wide lock held while a test binary owns the cluster.
	LockPath = "/run/devgpu-k8s.lock"
	// SessionImage is a small image present on the node (busybox with its
	// applets in /bin), for sessions and test Pods.
	SessionImage = "k8s.local/busybox:1"
	// GPUProduct and Region are the labels cluster.sh puts on the node, as
	// GPU Feature Discovery and a cloud provider would.
	GPUProduct = "Tesla-T4"
	Region     = "k8s-local"
	// GPUResource is the extended resource the device plugin advertises;
	// its devices are named GPU-sim-0 to GPU-sim-<GPUs-1>.
	GPUResource = "nvidia.com/gpu"

	// RequireEnv, set to 1 (CI sets it), turns "no cluster here" from a
	// skip into a failure.
	RequireEnv = "DEVGPU_K8S_REQUIRE"
)

// Waits for the cluster, slower than anything else tests wait for: another
// test binary may hold the cluster for its whole run, and starting it runs
// a dozen processes on a busy machine.
const (
	lockWait  = 10 * testutil.WaitLong
	upWait    = 3 * testutil.WaitLong
	downWait  = 2 * testutil.WaitLong
	buildWait = 3 * testutil.WaitLong
)

// Cluster is the running cluster.
type Cluster struct {
	Kubeconfig string // admin (system:masters) kubeconfig
	Node       string // the one node's name
	NodeIP     string // where the host reaches the node (and the kubelet listens)
	GPUs       int    // nvidia.com/gpu the node advertises
	// AgentImage is the devgpu agent image (agentimage.DefaultRef) built from
	// this tree and imported into the node; use it with pull policy Never
	// or IfNotPresent.
	AgentImage   string
	SessionImage string
	// KubectlPath is kubectl of the cluster's version; run it with Env.
	KubectlPath string
	Client      kubernetes.Interface
	Config      *rest.Config

	env []string
}

var (
	mu      sync.Mutex
	current *Cluster
	refusal string // why there is no cluster here (skip, or fail under RequireEnv)
	failure error  // the cluster could not start
	owned   bool   // this process ran cluster.sh up, so Main runs down
	lock    *os.File
	tmpDir  string
	script  string
)

// Get returns the cluster, starting it on the first call in a test binary.
// It skips the test, saying why, where a cluster cannot run (not root, the
// binaries not built, packages missing), unless DEVGPU_K8S_REQUIRE=1.
func Get(t testing.TB) *Cluster {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if current == nil && refusal == "" && failure == nil {
		current, refusal, failure = start(t)
	}
	switch {
	case refusal != "":
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s (%s=1 makes this a failure)", refusal, RequireEnv)
		}
		t.Skip(refusal)
	case failure != nil:
		t.Fatal(failure)
	}
	return current
}

// Main runs the tests, then stops the cluster if Get started it and lets
// the next test binary have it. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintln(os.Stderr, "kcluster:", err)
		if code == 0 {
			code = 1
		}
	}
	testutil.Cleanup()
	os.Exit(code)
}

func start(t testing.TB) (*Cluster, string, error) {
	if os.Geteuid() != 0 {
		return nil, "the Kubernetes test cluster needs root (it runs containerd and the kubelet); run the tests as root to include these", nil
	}
	root, err := testutil.ModuleRoot()
	if err != nil {
		return nil, "", fmt.Errorf("find the module root from %s: %w", mustGetwd(), err)
	}
	script = filepath.Join(root, "test", "k8s", "cluster.sh")
	if err := exec.Command(script, "cached").Run(); err != nil {
		return nil, "the Kubernetes binaries are not built; run `test/k8s/cluster.sh build` once as root (10-15 minutes)", nil
	}
	if out, err := exec.Command(script, "deps").CombinedOutput(); err != nil {
		return nil, fmt.Sprintf("the packages the Kubernetes test cluster needs are missing and could not be installed: %s", lastLine(out)), nil
	}

	if err := takeLock(t); err != nil {
		return nil, "", err
	}
	tmpDir, err = os.MkdirTemp("", "devgpu-kcluster-")
	if err != nil {
		return nil, "", fmt.Errorf("make a temporary directory: %w", err)
	}
	tar, err := buildAgentImage(root, tmpDir)
	if err != nil {
		return nil, "", err
	}

	t.Logf("kcluster: starting the Kubernetes test cluster (test/k8s/cluster.sh up)")
	began := time.Now()
	owned = true
	ctx, cancel := context.WithTimeout(context.Background(), upWait)
	defer cancel()
	up := exec.CommandContext(ctx, script, "up")
	up.Env = append(os.Environ(), "DEVGPU_AGENT_IMAGE_TAR="+tar)
	if out, err := up.CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("start the Kubernetes test cluster: %v; cluster.sh up said:\n%s", err, tail(out, 40))
	}
	t.Logf("kcluster: cluster up in %s", time.Since(began).Round(100*time.Millisecond))

	c, err := connect()
	if err != nil {
		return nil, "", err
	}
	return c, "", nil
}

// takeLock waits for the host-wide lock: another test binary may be using
// the cluster.
func takeLock(t testing.TB) error {
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("open the cluster lock %s: %w", LockPath, err)
	}
	deadline := time.Now().Add(lockWait)
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			lock = f
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("lock %s: %w", LockPath, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return fmt.Errorf("another test binary held the Kubernetes test cluster (%s) for over %s; wait for it or stop it", LockPath, lockWait)
		}
		if !logged {
			t.Logf("kcluster: waiting for another test binary to finish with the cluster (%s)", LockPath)
			logged = true
		}
		time.Sleep(testutil.Poll * 10)
	}
}

// buildAgentImage builds the static agent from this tree, as `make build`
// does, and its image; it returns the image tarball's path.
func buildAgentImage(root, dir string) (string, error) {
	agent := filepath.Join(dir, "devgpu-agent")
	ctx, cancel := context.WithTimeout(context.Background(), buildWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "agentonly", "-o", agent, "./cmd/devgpu")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the static agent: %v\n%s", err, out)
	}
	img, err := agentimage.Build(agent)
	if err != nil {
		return "", err
	}
	tar := filepath.Join(dir, "agent-image.tar")
	if err := img.WriteTarball(tar, agentimage.DefaultRef); err != nil {
		return "", err
	}
	return tar, nil
}

// connect reads where the running cluster is and makes its client.
func connect() (*Cluster, error) {
	out, err := exec.Command(script, "paths").Output()
	if err != nil {
		return nil, fmt.Errorf("ask cluster.sh where the cluster is: %w", err)
	}
	paths := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			paths[k] = v
		}
	}
	gpus, err := strconv.Atoi(paths["GPUS"])
	if err != nil {
		return nil, fmt.Errorf("cluster.sh paths gave no GPU count: %q", out)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", paths["KUBECONFIG"])
	if err != nil {
		return nil, fmt.Errorf("load the cluster's kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = 100, 200 // tests create many objects quickly
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("make the cluster's client: %w", err)
	}
	return &Cluster{
		Kubeconfig:   paths["KUBECONFIG"],
		Node:         paths["NODE"],
		NodeIP:       paths["NODE_IP"],
		GPUs:         gpus,
		AgentImage:   agentimage.DefaultRef,
		SessionImage: SessionImage,
		KubectlPath:  filepath.Join(paths["BIN"], "kubectl"),
		Client:       client,
		Config:       cfg,
		env:          []string{"KUBECONFIG=" + paths["KUBECONFIG"], "KUBECACHEDIR=" + paths["KUBECACHEDIR"]},
	}, nil
}

func teardown() error {
	mu.Lock()
	defer mu.Unlock()
	var err error
	if owned {
		ctx, cancel := context.WithTimeout(context.Background(), downWait)
		defer cancel()
		if out, derr := exec.CommandContext(ctx, script, "down").CombinedOutput(); derr != nil {
			err = fmt.Errorf("stop the Kubernetes test cluster: %v\n%s", derr, tail(out, 20))
		}
		owned = false
	}
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
		tmpDir = ""
	}
	if lock != nil {
		lock.Close() // releases the flock
		lock = nil
	}
	current = nil
	return err
}

// Env is the environment kubectl needs for this cluster, to append to
// os.Environ().
func (c *Cluster) Env() []string { return append([]string(nil), c.env...) }

// Kubectl runs kubectl against the cluster and returns its stdout; the test
// fails when kubectl does.
func (c *Cluster) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.KubectlPath, args...)
	cmd.Env = append(os.Environ(), c.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

var notName = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace of its own for the test, deleted when the
// test ends, and returns its name once Pods can be created in it (its
// default ServiceAccount exists).
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	base := strings.Trim(notName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(base) > 40 {
		base = base[:40]
	}
	ctx := testutil.Context(t, testutil.WaitLong)
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: base + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create a namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
		defer cancel()
		zero := int64(0)
		c.Client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	sel := fields.OneTermEqualSelector("metadata.name", "default").String()
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return c.Client.CoreV1().ServiceAccounts(ns.Name).List(ctx, o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return c.Client.CoreV1().ServiceAccounts(ns.Name).Watch(ctx, o)
		},
	}
	if _, err := watchtools.UntilWithSync(ctx, lw, &corev1.ServiceAccount{}, nil, func(e watch.Event) (bool, error) {
		return e.Type == watch.Added || e.Type == watch.Modified, nil
	}); err != nil {
		t.Fatalf("wait for the default ServiceAccount of namespace %s: %v", ns.Name, err)
	}
	return ns.Name
}

// WaitPod waits until done says the Pod is as the test wants (or done
// returns an error), and returns the Pod. It watches rather than polls, from
// a list, so it cannot miss a change (a single raw watch can close before
// its first event).
func (c *Cluster) WaitPod(t testing.TB, namespace, name string, d time.Duration, done func(*corev1.Pod) (bool, error)) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return c.Client.CoreV1().Pods(namespace).List(ctx, o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return c.Client.CoreV1().Pods(namespace).Watch(ctx, o)
		},
	}
	var last *corev1.Pod
	ev, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, nil, func(e watch.Event) (bool, error) {
		p, ok := e.Object.(*corev1.Pod)
		if !ok {
			return false, nil
		}
		last = p
		if e.Type == watch.Deleted {
			return false, fmt.Errorf("pod %s/%s was deleted", namespace, name)
		}
		return done(p)
	})
	if err != nil {
		state := "never seen"
		if last != nil {
			state = describe(last)
		}
		t.Fatalf("wait for pod %s/%s: %v (last: %s)", namespace, name, err, state)
	}
	return ev.Object.(*corev1.Pod)
}

// Logs returns the logs of the Pod's only (or first) container.
func (c *Cluster) Logs(t testing.TB, namespace, name string) string {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitMedium)
	b, err := c.Client.CoreV1().Pods(namespace).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("logs of pod %s/%s: %v", namespace, name, err)
	}
	return string(b)
}

// describe says in one line where a Pod stands, for failure messages.
func describe(p *corev1.Pod) string {
	s := string(p.Status.Phase)
	for _, cond := range p.Status.Conditions {
		if cond.Status != corev1.ConditionTrue && cond.Message != "" {
			s += fmt.Sprintf("; %s: %s", cond.Type, cond.Message)
		}
	}
	for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil {
			s += fmt.Sprintf("; %s waiting: %s %s", cs.Name, w.Reason, w.Message)
		}
		if x := cs.State.Terminated; x != nil {
			s += fmt.Sprintf("; %s exited %d: %s %s", cs.Name, x.ExitCode, x.Reason, x.Message)
		}
	}
	return s
}

func mustGetwd() string {
	wd, _ := os.Getwd()
	return wd
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
