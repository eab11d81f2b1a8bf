//go:build linux && !agentonly

package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/google/uuid"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/testutil"
)

// newFakeClient is a fake cluster that, like a real one, gives every
// object it creates a UID.
func newFakeClient(objs ...k8sruntime.Object) *fake.Clientset {
	client := fake.NewClientset(objs...)
	client.PrependReactor("create", "*", func(action k8stesting.Action) (bool, k8sruntime.Object, error) {
		if obj, ok := action.(k8stesting.CreateAction).GetObject().(metav1.Object); ok && obj.GetUID() == "" {
			obj.SetUID(types.UID(uuid.NewString()))
		}
		return false, nil, nil
	})
	return client
}

// node is a cluster node with GPUs of product in region ("" leaves a
// label off).
func node(name, product, region string, gpus int64, isReady bool) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	if product != "" {
		n.Labels[labelGPUProduct] = product
	}
	if region != "" {
		n.Labels[labelRegion] = region
	}
	if gpus > 0 {
		n.Status.Allocatable = corev1.ResourceList{resourceGPU: *resource.NewQuantity(gpus, resource.DecimalSI)}
	}
	st := corev1.ConditionFalse
	if isReady {
		st = corev1.ConditionTrue
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}
	return n
}

// waitCapacity waits for CapacityChanged until Capacity is want.
func waitCapacity(t *testing.T, r *Runtime, want []runtime.Capacity) {
	t.Helper()
	deadline := time.After(testutil.WaitMedium)
	for {
		got, err := r.Capacity(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if slices.Equal(got, want) {
			return
		}
		select {
		case <-r.CapacityChanged():
		case <-deadline:
			t.Fatalf("Capacity = %v, want %v", got, want)
		}
	}
}

func TestCapacity(t *testing.T) {
	t.Parallel()
	client := newFakeClient(
		node("n1", "Tesla-T4", "r2", 4, true),
		node("n2", "Tesla-T4", "", 4, true), // no region label: Config.Region
		node("n3", "NVIDIA-A100-SXM4-80GB", "r2", 8, true),
		node("n4", "NVIDIA-A100-PCIE-80GB", "r2", 8, false), // not ready
		node("n5", "Some-New-GPU", "r2", 8, true),           // not mapped, no default type
		node("n7", "", "", 0, true),                         // no GPUs
	)
	cordoned := node("n6", "Tesla-T4", "r2", 4, true)
	cordoned.Spec.Unschedulable = true
	if _, err := client.CoreV1().Nodes().Create(context.Background(), cordoned, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := newTestRuntime(t, testConfig(client, link.NewHub(nil)))
	// New returns with the caches in sync: Capacity is right at once.
	got, _ := r.Capacity(context.Background())
	want := []runtime.Capacity{{Type: "a100", Region: "r2", Total: 8}, {Type: "t4", Region: "r1", Total: 4}, {Type: "t4", Region: "r2", Total: 4}}
	if !slices.Equal(got, want) {
		t.Fatalf("Capacity = %v, want %v", got, want)
	}
	// Drain the signal of the initial count.
	select {
	case <-r.CapacityChanged():
	default:
	}

	ctx := testutil.Context(t, testutil.WaitMedium)
	n4 := node("n4", "NVIDIA-A100-PCIE-80GB", "r2", 8, true)
	if _, err := client.CoreV1().Nodes().Update(ctx, n4, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCapacity(t, r, []runtime.Capacity{{Type: "a100", Region: "r2", Total: 16}, {Type: "t4", Region: "r1", Total: 4}, {Type: "t4", Region: "r2", Total: 4}})

	if err := client.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCapacity(t, r, []runtime.Capacity{{Type: "a100", Region: "r2", Total: 16}, {Type: "t4", Region: "r1", Total: 4}})

	// A default type takes in the unmapped product.
	cfg := testConfig(client, link.NewHub(nil))
	cfg.DefaultGPUType = "other"
	cfg.NodeSelector = map[string]string{labelRegion: "r2"}
	r2 := newTestRuntime(t, cfg)
	got, _ = r2.Capacity(context.Background())
	want = []runtime.Capacity{{Type: "a100", Region: "r2", Total: 16}, {Type: "other", Region: "r2", Total: 8}}
	if !slices.Equal(got, want) {
		t.Fatalf("with a default type and a node selector, Capacity = %v, want %v", got, want)
	}
}

// startAsync runs Start in the background; its result arrives on the
// returned channel, and every progress step on steps.
type startResult struct {
	pl  runtime.Placement
	err error
}

func startAsync(t *testing.T, r *Runtime, spec runtime.Spec) (<-chan startResult, <-chan string) {
	t.Helper()
	steps := make(chan string, 100)
	spec.Progress = func(step string, _, _ int64) { steps <- step }
	done := make(chan startResult, 1)
	ctx := testutil.Context(t, testutil.WaitLong)
	go func() {
		pl, err := r.Start(ctx, spec)
		done <- startResult{pl, err}
	}()
	return done, steps
}

// createdPod waits for the session's Pod to exist and returns it.
func createdPod(t *testing.T, client *fake.Clientset, id string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	testutil.Eventually(t, testutil.WaitMedium, "the session's Pod to be created", func() bool {
		var err error
		p, err = client.CoreV1().Pods("devgpu").Get(context.Background(), podName(id), metav1.GetOptions{})
		return err == nil
	})
	return p
}

func setStatus(t *testing.T, client *fake.Clientset, p *corev1.Pod, st corev1.PodStatus) *corev1.Pod {
	t.Helper()
	p = p.DeepCopy()
	p.Status = st
	p, err := client.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitStep waits for a progress step containing want.
func waitStep(t *testing.T, steps <-chan string, done <-chan startResult, want string) {
	t.Helper()
	timeout := time.After(testutil.WaitMedium)
	var seen []string
	for {
		select {
		case s := <-steps:
			if strings.Contains(s, want) {
				return
			}
			seen = append(seen, s)
		case res := <-done:
			t.Fatalf("Start ended (%v) before saying %q; it said %q", res.err, want, seen)
		case <-timeout:
			t.Fatalf("no progress step says %q; steps %q", want, seen)
		}
	}
}

func waitDone(t *testing.T, done <-chan startResult) startResult {
	t.Helper()
	select {
	case res := <-done:
		return res
	case <-time.After(testutil.WaitMedium):
		t.Fatal("Start did not return")
	}
	return startResult{}
}

// gone fails the test unless the session's Pod, Secret and NetworkPolicy
// are all deleted.
func gone(t *testing.T, client *fake.Clientset, id string) {
	t.Helper()
	ctx := context.Background()
	name := podName(id)
	if _, err := client.CoreV1().Pods("devgpu").Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Pod %s still exists (%v)", name, err)
	}
	if _, err := client.CoreV1().Secrets("devgpu").Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Secret %s still exists (%v)", name, err)
	}
	if _, err := client.NetworkingV1().NetworkPolicies("devgpu").Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("NetworkPolicy %s still exists (%v)", name, err)
	}
}

func TestStartWaitsThenFailsOnImage(t *testing.T) {
	t.Parallel()
	client := newFakeClient(node("n1", "Tesla-T4", "r1", 4, true))
	r := newTestRuntime(t, testConfig(client, link.NewHub(nil)))
	spec := testSpec("img-1")
	done, steps := startAsync(t, r, spec)
	p := createdPod(t, client, spec.SessionID)

	p = setStatus(t, client, p, corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
		Message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
	}}})
	waitStep(t, steps, done, "waiting for 2 free t4 GPUs in r1: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu")

	p.Spec.NodeName = "n1"
	if _, err := client.CoreV1().Pods("devgpu").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	p = createdPod(t, client, spec.SessionID)
	setStatus(t, client, p, corev1.PodStatus{Phase: corev1.PodPending,
		Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: containerName, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
			Reason: "ErrImagePull", Message: `failed to pull and unpack image "k8s.local/busybox:1": not found`,
		}}}},
	})
	res := waitDone(t, done)
	if res.err == nil || !strings.Contains(res.err.Error(), `image k8s.local/busybox:1 was not found or cannot be pulled: failed to pull and unpack image "k8s.local/busybox:1": not found`) {
		t.Fatalf("Start: %v, want the image's failure", res.err)
	}
	gone(t, client, spec.SessionID)
}

func TestStartFailsWhenNoNodeCanFit(t *testing.T) {
	t.Parallel()
	// The only t4 node has 1 GPU; the session asks for 2.
	client := newFakeClient(node("n1", "Tesla-T4", "r1", 1, true))
	r := newTestRuntime(t, testConfig(client, link.NewHub(nil)))
	spec := testSpec("fit-1")
	done, _ := startAsync(t, r, spec)
	p := createdPod(t, client, spec.SessionID)
	setStatus(t, client, p, corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
		Message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
	}}})
	res := waitDone(t, done)
	if res.err == nil || !strings.Contains(res.err.Error(), "no node of kube backend west can ever hold 2 t4 GPUs in r1: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu") {
		t.Fatalf("Start: %v, want that no node can fit", res.err)
	}
	gone(t, client, spec.SessionID)
}

func TestStartFailsWhenPodDeleted(t *testing.T) {
	t.Parallel()
	client := newFakeClient(node("n1", "Tesla-T4", "r1", 4, true))
	r := newTestRuntime(t, testConfig(client, link.NewHub(nil)))
	spec := testSpec("del-1")
	done, steps := startAsync(t, r, spec)
	createdPod(t, client, spec.SessionID)
	waitStep(t, steps, done, "waiting to be scheduled")
	if err := client.CoreV1().Pods("devgpu").Delete(context.Background(), podName(spec.SessionID), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	res := waitDone(t, done)
	if res.err == nil || !strings.Contains(res.err.Error(), "was deleted before its agent linked") {
		t.Fatalf("Start: %v, want the Pod's deletion", res.err)
	}
	gone(t, client, spec.SessionID)
}

func TestStartFailsWhenPodEnds(t *testing.T) {
	t.Parallel()
	client := newFakeClient(node("n1", "Tesla-T4", "r1", 4, true))
	r := newTestRuntime(t, testConfig(client, link.NewHub(nil)))
	spec := testSpec("end-1")
	done, _ := startAsync(t, r, spec)
	p := createdPod(t, client, spec.SessionID)
	setStatus(t, client, p, corev1.PodStatus{Phase: corev1.PodFailed,
		ContainerStatuses: []corev1.ContainerStatus{{Name: containerName, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 127, Reason: "Error",
		}}}},
	})
	res := waitDone(t, done)
	if res.err == nil || !strings.Contains(res.err.Error(), "ended before its agent linked: container session exited with status 127 (Error)") {
		t.Fatalf("Start: %v, want how the Pod ended", res.err)
	}
}

// linkServer serves hub over TLS as the control plane does and returns
// the agents' URL and TLS configuration.
func linkServer(t *testing.T, hub *link.Hub, credential func(id string) string) (string, *tls.Config) {
	t.Helper()
	hub.SetVerifier(func(id, cred string) (bool, error) { return cred == credential(id), nil })
	srv := httptest.NewTLSServer(hub)
	t.Cleanup(srv.Close)
	t.Cleanup(hub.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv.URL, &tls.Config{RootCAs: pool}
}

func TestStartLinksAndStops(t *testing.T) {
	t.Parallel()
	client := newFakeClient(node("n1", "Tesla-T4", "r1", 4, true))
	hub := link.NewHub(nil)
	spec := testSpec("link-1")
	url, tlsConf := linkServer(t, hub, func(string) string { return spec.LinkCredential })
	r := newTestRuntime(t, testConfig(client, hub))
	done, steps := startAsync(t, r, spec)
	p := createdPod(t, client, spec.SessionID)

	// The Secret and NetworkPolicy are the Pod's.
	var secret *corev1.Secret
	testutil.Eventually(t, testutil.WaitMedium, "the Secret to be owned", func() bool {
		secret, _ = client.CoreV1().Secrets("devgpu").Get(context.Background(), p.Name, metav1.GetOptions{})
		return secret != nil && len(secret.OwnerReferences) > 0
	})
	var policy *networkingv1.NetworkPolicy
	testutil.Eventually(t, testutil.WaitMedium, "the NetworkPolicy to be owned", func() bool {
		policy, _ = client.NetworkingV1().NetworkPolicies("devgpu").Get(context.Background(), p.Name, metav1.GetOptions{})
		return policy != nil && len(policy.OwnerReferences) > 0
	})
	for _, owners := range [][]metav1.OwnerReference{secret.OwnerReferences, policy.OwnerReferences} {
		if len(owners) != 1 || owners[0].UID != p.UID || owners[0].Kind != "Pod" || owners[0].Name != p.Name {
			t.Errorf("owners %+v, want the Pod %s", owners, p.UID)
		}
	}

	p.Spec.NodeName = "n1"
	if _, err := client.CoreV1().Pods("devgpu").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	p = createdPod(t, client, spec.SessionID)
	setStatus(t, client, p, corev1.PodStatus{Phase: corev1.PodRunning,
		ContainerStatuses: []corev1.ContainerStatus{{Name: containerName, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}},
	})
	waitStep(t, steps, done, "waiting for the session's agent to connect")

	// The agent links, as the one in the Pod would.
	actx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln := link.Listen(actx, link.AgentConfig{
		URL: url, SessionID: spec.SessionID, Credential: spec.LinkCredential, TLS: tlsConf,
		Report: link.Report{Node: "n1", Devices: []string{"GPU-sim-2", "GPU-sim-0"}},
	})
	defer ln.Close()
	res := waitDone(t, done)
	if res.err != nil {
		t.Fatalf("Start: %v", res.err)
	}
	want := runtime.Placement{Node: "n1", Devices: []string{"GPU-sim-2", "GPU-sim-0"}, Handle: "devgpu/devgpu-link-1"}
	if res.pl.Node != want.Node || !slices.Equal(res.pl.Devices, want.Devices) || res.pl.Handle != want.Handle {
		t.Fatalf("placement %+v, want %+v", res.pl, want)
	}

	ctx := testutil.Context(t, testutil.WaitMedium)
	list, err := r.List(ctx)
	if err != nil || len(list) != 1 || list[0].SessionID != spec.SessionID || !slices.Equal(list[0].Placement.Devices, want.Devices) || list[0].Placement.Node != "n1" {
		t.Fatalf("List = %+v, %v; want the session where it landed", list, err)
	}

	// Connect opens a stream the agent accepts.
	accepted := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err.Error()
			return
		}
		defer c.Close()
		b := make([]byte, 5)
		_, err = io.ReadFull(c, b)
		accepted <- fmt.Sprintf("%s %v", b, err)
	}()
	// Another installation's runtime on the same hub cannot reach it, nor
	// end its link.
	otherCfg := testConfig(client, hub)
	otherCfg.Installation = "inst-b"
	other := newTestRuntime(t, otherCfg)
	if _, err := other.Connect(ctx, spec.SessionID); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("another installation's Connect: %v, want ErrNotFound", err)
	}
	if err := other.Stop(ctx, spec.SessionID); err != nil || !hub.Linked(spec.SessionID) {
		t.Fatalf("another installation's Stop: %v; linked after it: %v", err, hub.Linked(spec.SessionID))
	}
	conn, err := r.Connect(ctx, spec.SessionID)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got := <-accepted; got != "hello <nil>" {
		t.Fatalf("the agent read %q", got)
	}
	conn.Close()

	if err := r.Stop(ctx, spec.SessionID); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	gone(t, client, spec.SessionID)
	if hub.Linked(spec.SessionID) {
		t.Error("the session is still linked after Stop")
	}
	if _, err := r.Connect(ctx, spec.SessionID); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Connect after Stop: %v, want ErrNotFound", err)
	}
	if list, _ := r.List(ctx); len(list) != 0 {
		t.Errorf("List after Stop = %+v", list)
	}
	if err := r.Stop(ctx, spec.SessionID); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestOwnership: a runtime lists and stops only Pods with its installation
// and backend labels; a Pod deleted behind its back leaves List.
func TestOwnership(t *testing.T) {
	t.Parallel()
	client := newFakeClient(node("n1", "Tesla-T4", "r1", 4, true))
	hub := link.NewHub(nil)
	a := newTestRuntime(t, testConfig(client, hub))
	cfgB := testConfig(client, hub)
	cfgB.Installation = "inst-b"
	b := newTestRuntime(t, cfgB)
	cfgC := testConfig(client, hub)
	cfgC.Backend = "east"
	c := newTestRuntime(t, cfgC)

	ctx := testutil.Context(t, testutil.WaitMedium)
	// Sessions as Start leaves them, without linking.
	for _, id := range []string{"own-1", "own-2"} {
		spec := testSpec(id)
		for _, create := range []func() error{
			func() error {
				_, err := client.CoreV1().Secrets("devgpu").Create(ctx, a.secret(spec), metav1.CreateOptions{})
				return err
			},
			func() error {
				_, err := client.NetworkingV1().NetworkPolicies("devgpu").Create(ctx, a.networkPolicy(spec, nil), metav1.CreateOptions{})
				return err
			},
			func() error {
				_, err := client.CoreV1().Pods("devgpu").Create(ctx, a.pod(spec, ""), metav1.CreateOptions{})
				return err
			},
		} {
			if err := create(); err != nil {
				t.Fatal(err)
			}
		}
	}
	ids := func(r *Runtime) []string {
		list, err := r.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, in := range list {
			out = append(out, in.SessionID)
		}
		slices.Sort(out)
		return out
	}
	if got := ids(a); !slices.Equal(got, []string{"own-1", "own-2"}) {
		t.Fatalf("a lists %v", got)
	}
	for _, other := range []*Runtime{b, c} {
		if got := ids(other); len(got) != 0 {
			t.Fatalf("installation %s backend %s lists another's sessions %v", other.cfg.Installation, other.cfg.Backend, got)
		}
		if err := other.Stop(ctx, "own-1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, get := range []func() error{
		func() error {
			_, err := client.CoreV1().Pods("devgpu").Get(ctx, "devgpu-own-1", metav1.GetOptions{})
			return err
		},
		func() error {
			_, err := client.CoreV1().Secrets("devgpu").Get(ctx, "devgpu-own-1", metav1.GetOptions{})
			return err
		},
		func() error {
			_, err := client.NetworkingV1().NetworkPolicies("devgpu").Get(ctx, "devgpu-own-1", metav1.GetOptions{})
			return err
		},
	} {
		if err := get(); err != nil {
			t.Fatalf("another installation's Stop removed the first's object: %v", err)
		}
	}

	// Deleted behind the runtime's back: gone from List.
	if err := client.CoreV1().Pods("devgpu").Delete(ctx, "devgpu-own-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := ids(a); !slices.Equal(got, []string{"own-1"}) {
		t.Fatalf("after a Pod was deleted, a lists %v", got)
	}
	// An ended Pod is no session either.
	p, err := client.CoreV1().Pods("devgpu").Get(ctx, "devgpu-own-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setStatus(t, client, p, corev1.PodStatus{Phase: corev1.PodSucceeded})
	if got := ids(a); len(got) != 0 {
		t.Fatalf("an ended Pod is listed: %v", got)
	}
}
