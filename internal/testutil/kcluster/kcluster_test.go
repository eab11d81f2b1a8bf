//go:build linux

package kcluster

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/devgpu/devgpu/internal/testutil"
)

func TestMain(m *testing.M) { Main(m) }

// pod is a Pod that runs once and keeps nothing of the host's.
func pod(name, image string, gpus int64, command ...string) *corev1.Pod {
	zero := int64(0)
	c := corev1.Container{
		Name:            "main",
		Image:           image,
		ImagePullPolicy: corev1.PullNever, // only what the cluster imported
		Args:            command,
	}
	if gpus > 0 {
		c.Resources.Limits = corev1.ResourceList{GPUResource: *resource.NewQuantity(gpus, resource.DecimalSI)}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &zero,
			Containers:                    []corev1.Container{c},
		},
	}
}

func finished(p *corev1.Pod) (bool, error) {
	switch p.Status.Phase {
	case corev1.PodSucceeded:
		return true, nil
	case corev1.PodFailed:
		return false, fmt.Errorf("pod failed: %s", describe(p))
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && (w.Reason == "ErrImageNeverPull" || w.Reason == "CreateContainerError") {
			return false, fmt.Errorf("container cannot start: %s %s", w.Reason, w.Message)
		}
	}
	return false, nil
}

func TestNodeAdvertisesGPUsWithTypeAndRegion(t *testing.T) {
	c := Get(t)
	ctx := testutil.Context(t, testutil.WaitMedium)
	node, err := c.Client.CoreV1().Nodes().Get(ctx, c.Node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := node.Labels["nvidia.com/gpu.product"]; got != GPUProduct {
		t.Errorf("node label nvidia.com/gpu.product = %q, want %q", got, GPUProduct)
	}
	if got := node.Labels["topology.kubernetes.io/region"]; got != Region {
		t.Errorf("node label topology.kubernetes.io/region = %q, want %q", got, Region)
	}
	gpus := node.Status.Allocatable[GPUResource]
	if gpus.Value() != int64(c.GPUs) || c.GPUs != 4 {
		t.Errorf("allocatable %s = %s (cluster says %d), want 4", GPUResource, gpus.String(), c.GPUs)
	}
	if v := node.Status.NodeInfo.KubeletVersion; v != "v1.37.2" {
		t.Errorf("kubelet version %q, want v1.37.2", v)
	}
	if out := c.Kubectl(t, "get", "node", c.Node, "-o", "jsonpath={.metadata.name}"); out != c.Node {
		t.Errorf("kubectl get node printed %q, want %q", out, c.Node)
	}
}

func TestPodGetsASimulatedGPU(t *testing.T) {
	c := Get(t)
	ns := c.Namespace(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	p := pod("gpu", c.SessionImage, 1, "sh", "-c", `echo "$NVIDIA_VISIBLE_DEVICES"; ls /dev/nvidia*`)
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitPod(t, ns, "gpu", testutil.WaitLong, finished)
	out := strings.Fields(c.Logs(t, ns, "gpu"))
	var m []string
	if len(out) == 2 {
		m = regexp.MustCompile(`^GPU-sim-([0-9]+)$`).FindStringSubmatch(out[0])
	}
	if m == nil || out[1] != "/dev/nvidia"+m[1] {
		t.Fatalf("pod printed %q, want one GPU-sim-<n> id and its /dev/nvidia<n>", out)
	}
}

func TestAgentImageRuns(t *testing.T) {
	c := Get(t)
	ns := c.Namespace(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	// The image holds only the agent, so this also proves it is static.
	p := pod("agent", c.AgentImage, 0, "--version")
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitPod(t, ns, "agent", testutil.WaitLong, finished)
	if out := c.Logs(t, ns, "agent"); !strings.HasPrefix(out, "devgpu ") {
		t.Fatalf("the agent image's --version printed %q, want devgpu <version>", out)
	}
}
