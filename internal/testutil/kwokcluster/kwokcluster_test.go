//go:build linux

package kwokcluster_test

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/kwokcluster"
)

func TestMain(m *testing.M) { kwokcluster.Main(m) }

// gpuPod is a Pod asking for gpus nvidia.com/gpu, held to the nodes whose
// labels match selector.
func gpuPod(name string, gpus int, selector map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kwokcluster.Namespace},
		Spec: corev1.PodSpec{
			NodeSelector: selector,
			Containers: []corev1.Container{{
				Name:  "session",
				Image: "devgpu.local/never-pulled:1",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
					kwokcluster.GPUResource: *resource.NewQuantity(int64(gpus), resource.DecimalSI),
				}},
			}},
		},
	}
}

// TestScheduler brings up 100 fake nodes with 8 GPUs each in two regions and
// checks what the scale test relies on: the real scheduler places a Pod
// asking for one GPU in the region it asks for and kwok makes it Running, a
// Pod asking for more GPUs than a node has stays Pending with the scheduler's
// reason, and a node's GPU count changed by SetNodeGPUs is what the scheduler
// sees.
func TestScheduler(t *testing.T) {
	c := kwokcluster.Get(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	regions := []string{"westus3", "eastus"}
	names := c.Nodes(t, 100, 8, regions...)

	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "type=kwok"})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != len(names) {
		t.Fatalf("got %d kwok nodes, want %d", len(nodes.Items), len(names))
	}
	perRegion := map[string]int{}
	for _, n := range nodes.Items {
		perRegion[n.Labels[kwokcluster.RegionLabel]]++
		if got := n.Labels[kwokcluster.ProductLabel]; got != kwokcluster.Product {
			t.Errorf("node %s: %s = %q, want %q", n.Name, kwokcluster.ProductLabel, got, kwokcluster.Product)
		}
		if q := n.Status.Allocatable[kwokcluster.GPUResource]; q.Value() != 8 {
			t.Errorf("node %s: allocatable %s = %s, want 8", n.Name, kwokcluster.GPUResource, q.String())
		}
		for _, taint := range n.Spec.Taints {
			t.Errorf("node %s still has taint %s", n.Name, taint.ToString())
		}
	}
	for _, r := range regions {
		if perRegion[r] != 50 {
			t.Errorf("region %s has %d nodes, want 50 (all: %v)", r, perRegion[r], perRegion)
		}
	}

	pods := c.Client.CoreV1().Pods(kwokcluster.Namespace)
	for _, r := range regions {
		name := "one-gpu-" + r
		if _, err := pods.Create(ctx, gpuPod(name, 1, map[string]string{kwokcluster.RegionLabel: r}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p, err := c.WaitPod(ctx, kwokcluster.Namespace, name, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(p.Spec.NodeName, "kwok-"+r+"-") {
			t.Errorf("pod %s asked for region %s and landed on %q", name, r, p.Spec.NodeName)
		}
	}

	// Nine GPUs fit on no node: Pending with the scheduler's reason.
	if _, err := pods.Create(ctx, gpuPod("nine-gpus", 9, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := c.WaitPod(ctx, kwokcluster.Namespace, "nine-gpus", func(p *corev1.Pod) bool { return kwokcluster.Unschedulable(p) != "" })
	if err != nil {
		t.Fatal(err)
	}
	if why := kwokcluster.Unschedulable(p); !strings.Contains(why, "Insufficient nvidia.com/gpu") || p.Spec.NodeName != "" {
		t.Errorf("nine-gpus: node %q, reason %q; want unscheduled for Insufficient nvidia.com/gpu", p.Spec.NodeName, why)
	}

	// A node with its GPUs taken away cannot take a Pod pinned to it; given
	// them back, the scheduler places the waiting Pod.
	node := names[len(names)-1]
	if err := c.SetNodeGPUs(ctx, node, 0); err != nil {
		t.Fatal(err)
	}
	pinned := gpuPod("pinned", 1, map[string]string{"kubernetes.io/hostname": node})
	if _, err := pods.Create(ctx, pinned, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err = c.WaitPod(ctx, kwokcluster.Namespace, "pinned", func(p *corev1.Pod) bool { return kwokcluster.Unschedulable(p) != "" })
	if err != nil {
		t.Fatal(err)
	}
	if why := kwokcluster.Unschedulable(p); !strings.Contains(why, "Insufficient nvidia.com/gpu") {
		t.Errorf("pinned on a node with 0 GPUs: reason %q, want Insufficient nvidia.com/gpu", why)
	}
	if err := c.SetNodeGPUs(ctx, node, 8); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitPod(ctx, kwokcluster.Namespace, "pinned", func(p *corev1.Pod) bool {
		return p.Spec.NodeName == node && p.Status.Phase == corev1.PodRunning
	}); err != nil {
		t.Fatal(err)
	}

	// Deleted Pods go away (kwok finishes what a kubelet would).
	for _, name := range []string{"one-gpu-westus3", "one-gpu-eastus", "nine-gpus", "pinned"} {
		if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, testutil.WaitMedium, "the deleted pods to go away", func() bool {
		l, err := pods.List(context.Background(), metav1.ListOptions{})
		return err == nil && len(l.Items) == 0
	})
}
