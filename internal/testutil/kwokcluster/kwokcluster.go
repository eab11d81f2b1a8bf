//go:build linux

// Package kwokcluster gives tests a kwok cluster: a real kube-apiserver and
// kube-scheduler with as many fake GPU nodes as a test asks for
// (test/kwok/cluster.sh). The scheduler places Pods on the fake nodes and kwok
// marks them Running, but no container runs: it is for admission and
// placement at scale, not for sessions that must run (kcluster is for those).
//
// One kwok cluster runs on a host at a time (its ports are fixed): the first
// Get in a test binary takes a host-wide lock, starts the cluster and keeps it
// for the binary's other tests; Main, called from TestMain, stops it.
package kwokcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	watchtools "k8s.io/client-go/tools/watch"
)

const (
	// lockPath is host-wide and apart from kcluster's, so the real cluster
	// and the kwok one can run side by side, each one at a time.
	lockPath = "/run/devgpu-kwok.lock"
	// buildTimeout bounds cluster.sh build: kwok from cold takes about 2
	// minutes on 2 cores, and when test/k8s's binaries are not cached yet it
	// builds those too (10-15 minutes).
	buildTimeout = 25 * time.Minute
	// upTimeout bounds cluster.sh up once everything is built (about 5 s).
	upTimeout = 2 * time.Minute
	// nodesTimeout bounds cluster.sh nodes (100 nodes take a few seconds).
	nodesTimeout = 3 * time.Minute

	// Namespace is the namespace cluster.sh up creates for devgpu's Pods,
	// with its default ServiceAccount.
	Namespace = "devgpu"
	// GPUResource is the extended resource the fake nodes advertise.
	GPUResource corev1.ResourceName = "nvidia.com/gpu"
	// ProductLabel and RegionLabel are the node labels cluster.sh nodes sets
	// (GPU Feature Discovery's product label and the well-known region).
	ProductLabel = "nvidia.com/gpu.product"
	RegionLabel  = "topology.kubernetes.io/region"
	// Product is the GPU product of the fake nodes.
	Product = "NVIDIA-A100-SXM4-80GB"
)

// Cluster is a running kwok cluster.
type Cluster struct {
	// Kubeconfig is the path of a cluster-admin kubeconfig.
	Kubeconfig string
	// Config is the REST config read from it, with limits raised for scale
	// tests; Client is a clientset built from it.
	Config *rest.Config
	Client kubernetes.Interface

	script string // test/kwok/cluster.sh
}

var (
	mu       sync.Mutex
	lockFile *os.File
	started  *Cluster
	startErr error
	skipWhy  string
)

// Get returns the test binary's kwok cluster, starting it on the first call.
// It skips the test when the cluster cannot run here (not root).
func Get(t testing.TB) *Cluster {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if started == nil && startErr == nil && skipWhy == "" {
		started, startErr = start()
	}
	switch {
	case skipWhy != "":
		t.Skip(skipWhy)
	case startErr != nil:
		t.Fatalf("start the kwok cluster: %v", startErr)
	}
	return started
}

func start() (*Cluster, error) {
	if os.Geteuid() != 0 {
		skipWhy = "the kwok cluster needs root (its binaries are cached in /var/cache and its lock is in /run); run the tests as root, as CI does"
		return nil, nil
	}
	script, err := findScript()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the kwok cluster's lock %s: %w", lockPath, err)
	}
	// Another test binary may hold the cluster: wait for it to finish.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	lockFile = f
	c := &Cluster{script: script}
	if _, err := c.run(buildTimeout, "build"); err != nil {
		return nil, err
	}
	out, err := c.run(upTimeout, "up")
	if err != nil {
		c.run(upTimeout, "down")
		return nil, err
	}
	// up's last line is the export line: export KUBECONFIG=<path> ...
	for _, field := range strings.Fields(lastLine(out)) {
		if v, ok := strings.CutPrefix(field, "KUBECONFIG="); ok {
			c.Kubeconfig = v
		}
	}
	if c.Kubeconfig == "" {
		c.run(upTimeout, "down")
		return nil, fmt.Errorf("cluster.sh up printed no KUBECONFIG in its last line: %q", lastLine(out))
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		c.run(upTimeout, "down")
		return nil, fmt.Errorf("read %s: %w", c.Kubeconfig, err)
	}
	// Scale tests make hundreds of requests at once; client-go's default of
	// 5 per second would measure its own limiter, not the cluster.
	cfg.QPS, cfg.Burst = 1000, 2000
	c.Config = cfg
	if c.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		c.run(upTimeout, "down")
		return nil, fmt.Errorf("make a client for %s: %w", c.Kubeconfig, err)
	}
	return c, nil
}

// Main runs the tests, stops the cluster if Get started it and exits with the
// tests' status. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if err := Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "kwokcluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// Stop stops the cluster if Get started it and releases the host-wide lock;
// a later Get starts a new one. A test binary whose TestMain belongs to
// another helper (e2e's is kcluster.Main) registers it with t.Cleanup
// instead of calling Main.
func Stop() error {
	mu.Lock()
	defer mu.Unlock()
	var err error
	if started != nil {
		if out, derr := started.run(upTimeout, "down"); derr != nil {
			err = fmt.Errorf("stop the kwok cluster: %w\n%s", derr, out)
		}
		started = nil
	}
	if lockFile != nil {
		lockFile.Close() // releases the flock
		lockFile = nil
	}
	return err
}

// Nodes makes n fake nodes with gpus nvidia.com/gpu each, spread over the
// regions in turn, labelled with Product and their region, and returns their
// names once all are Ready and schedulable. Nodes that exist already keep
// their status.
func (c *Cluster) Nodes(t testing.TB, n, gpus int, regions ...string) []string {
	t.Helper()
	if len(regions) == 0 {
		t.Fatal("kwokcluster.Nodes needs at least one region")
	}
	args := append([]string{"nodes", strconv.Itoa(n), strconv.Itoa(gpus)}, regions...)
	if out, err := c.run(nodesTimeout, args...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("kwok-%s-%03d", regions[i%len(regions)], i)
	}
	return names
}

// SetNodeGPUs changes a node's nvidia.com/gpu capacity and allocatable, as a
// device plugin does when GPUs come or go. kwok's heartbeat leaves them be.
func (c *Cluster) SetNodeGPUs(ctx context.Context, node string, gpus int) error {
	q := resource.MustParse(strconv.Itoa(gpus))
	patch := fmt.Sprintf(`{"status":{"capacity":{%q:%q},"allocatable":{%q:%q}}}`,
		GPUResource, q.String(), GPUResource, q.String())
	_, err := c.Client.CoreV1().Nodes().Patch(ctx, node, "application/strategic-merge-patch+json",
		[]byte(patch), metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("set %s's %s to %d: %w", node, GPUResource, gpus, err)
	}
	return nil
}

// WaitPod waits until the Pod namespace/name satisfies cond, watching rather
// than polling, and returns it. A Pod that does not exist yet is waited for.
func (c *Cluster) WaitPod(ctx context.Context, namespace, name string, cond func(*corev1.Pod) bool) (*corev1.Pod, error) {
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
		return e.Type != watch.Deleted && cond(p), nil
	})
	if err != nil {
		if last != nil {
			return last, fmt.Errorf("wait for pod %s/%s (phase %s, %s): %w", namespace, name, last.Status.Phase, scheduledMessage(last), err)
		}
		return nil, fmt.Errorf("wait for pod %s/%s (not seen yet): %w", namespace, name, err)
	}
	return ev.Object.(*corev1.Pod), nil
}

// Kubectl runs kubectl against the cluster and returns its standard output.
func (c *Cluster) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.run(nodesTimeout, append([]string{"kubectl"}, args...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// Scheduled reports whether the scheduler placed p, and
// Unschedulable the scheduler's reason when it could not (empty otherwise).
func Scheduled(p *corev1.Pod) bool { return p.Spec.NodeName != "" }

func Unschedulable(p *corev1.Pod) string {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable {
			return cond.Message
		}
	}
	return ""
}

func scheduledMessage(p *corev1.Pod) string {
	if p.Spec.NodeName != "" {
		return "on node " + p.Spec.NodeName
	}
	if m := Unschedulable(p); m != "" {
		return "unschedulable: " + m
	}
	return "not scheduled yet"
}

// run runs cluster.sh with args and returns its standard output; the error
// carries its standard error, where the script logs.
func (c *Cluster) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.script, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("gave up after %s: %w", timeout, err)
		}
		return stdout.String(), fmt.Errorf("test/kwok/cluster.sh %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// findScript finds test/kwok/cluster.sh in the module holding the test's
// working directory.
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "test", "kwok", "cluster.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find test/kwok/cluster.sh: run the test inside the devgpu module")
		}
		dir = parent
	}
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}
