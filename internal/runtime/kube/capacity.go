//go:build linux && !agentonly

package kube

import (
	"cmp"
	"context"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/devgpu/devgpu/internal/runtime"
)

// Capacity is the allocatable nvidia.com/gpu of the cluster's ready,
// schedulable nodes that match Config.NodeSelector, summed per GPU type
// and region, from the node informer.
func (r *Runtime) Capacity(context.Context) ([]runtime.Capacity, error) {
	r.capMu.Lock()
	defer r.capMu.Unlock()
	return slices.Clone(r.capacity), nil
}

// CapacityChanged receives after a node change that changed Capacity.
// Changes coalesce: one receive stands for any number of them.
func (r *Runtime) CapacityChanged() <-chan struct{} { return r.capChanged }

// recount sums the nodes' GPUs again and signals CapacityChanged if the
// sums differ from the last.
func (r *Runtime) recount() {
	nodes, err := r.nodes.List(labels.Everything())
	if err != nil {
		r.log.Error("list nodes from the informer", "err", err)
		return
	}
	caps := r.sum(nodes)
	r.capMu.Lock()
	same := slices.Equal(caps, r.capacity)
	r.capacity = caps
	r.capMu.Unlock()
	if same {
		return
	}
	r.log.Info("cluster capacity changed", "capacity", caps)
	select {
	case r.capChanged <- struct{}{}:
	default: // a signal is already pending
	}
}

// sum is the capacity the nodes offer, sorted by type and region.
func (r *Runtime) sum(nodes []*corev1.Node) []runtime.Capacity {
	type key struct{ typ, region string }
	totals := map[key]int{}
	for _, n := range nodes {
		typ, region, gpus, ok := r.offer(n)
		if !ok || !ready(n) || n.Spec.Unschedulable {
			continue
		}
		totals[key{typ, region}] += gpus
	}
	caps := make([]runtime.Capacity, 0, len(totals))
	for k, total := range totals {
		caps = append(caps, runtime.Capacity{Type: k.typ, Region: k.region, Total: total})
	}
	slices.SortFunc(caps, func(a, b runtime.Capacity) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Region, b.Region))
	})
	return caps
}

// offer says which GPUs a node offers this backend: their type, region and
// number; ok is false for a node that offers none (no GPUs, an unmapped
// product without a default type, outside Config.NodeSelector).
func (r *Runtime) offer(n *corev1.Node) (typ, region string, gpus int, ok bool) {
	q, has := n.Status.Allocatable[resourceGPU]
	if !has || q.Value() <= 0 {
		return "", "", 0, false
	}
	if !labels.SelectorFromSet(r.cfg.NodeSelector).Matches(labels.Set(n.Labels)) {
		return "", "", 0, false
	}
	typ, mapped := r.cfg.GPUTypes[n.Labels[labelGPUProduct]]
	if !mapped {
		typ = r.cfg.DefaultGPUType
	}
	if typ == "" {
		return "", "", 0, false
	}
	region, labelled := n.Labels[labelRegion]
	if !labelled {
		region = r.cfg.Region
	}
	return typ, region, int(q.Value()), true
}

// ready reports whether the node's Ready condition is true.
func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// anyNodeFits reports whether some node of the cluster, ready or not, could
// ever hold the request: of its type and region, with as many GPUs. When
// none can, a Pod that the scheduler leaves pending will wait forever.
func (r *Runtime) anyNodeFits(req runtime.GPURequest) bool {
	nodes, err := r.nodes.List(labels.Everything())
	if err != nil {
		return true // cannot tell: keep waiting
	}
	for _, n := range nodes {
		if req.Count == 0 {
			if labels.SelectorFromSet(r.cfg.NodeSelector).Matches(labels.Set(n.Labels)) && r.inRegion(n, req.Region) {
				return true
			}
			continue
		}
		typ, region, gpus, ok := r.offer(n)
		if ok && typ == req.Type && (req.Region == "" || region == req.Region) && gpus >= req.Count {
			return true
		}
	}
	return false
}

// inRegion reports whether the node lies in region ("" is any).
func (r *Runtime) inRegion(n *corev1.Node, region string) bool {
	if region == "" {
		return true
	}
	got, ok := n.Labels[labelRegion]
	if !ok {
		got = r.cfg.Region
	}
	return got == region
}
