//go:build linux && !agentonly

// Package kube runs sessions as Pods on a Kubernetes cluster, which
// schedules them onto its GPU nodes; the device plugin (or DRA) chooses
// the devices.
//
// # A session
//
// Each session is a Pod devgpu-<id> in Config.Namespace, with a Secret and
// a NetworkPolicy of the same name, all labelled with the installation,
// the backend, the session, its user and its project. The Pod asks for
// nvidia.com/gpu: N and selects the nodes whose GPU Feature Discovery label
// nvidia.com/gpu.product maps to the requested type (Config.GPUTypes) in
// the requested region (topology.kubernetes.io/region, or Config.Region
// for nodes without it).
//
// An init container copies the static agent from Config.AgentImage into
// an emptyDir; the session image's container runs it. The agent cannot be
// dialled (Pods are rarely reachable from the control plane), so it dials
// out to the control plane's link endpoint (internal/link) with a
// credential minted for its session alone; Connect opens streams over that
// link. The credential, the agent's secret and the CA the agent trusts lie
// in the Secret, mounted read-only with mode 0400: never in the Pod's
// environment or arguments. The Secret and NetworkPolicy are created before
// the Pod (so that the Pod never runs without its policy) and are then
// owned by it, so that the cluster removes them with the Pod, however the
// Pod goes.
//
// # Ownership
//
// The runtime lists, stops and watches only objects that carry both its
// installation and its backend label: a second devgpu installation (or
// backend) on the same cluster is never touched. A Pod deleted, evicted or
// lost with its node simply disappears from List; the control plane then
// ends its session lost.
//
// # Watching, not polling
//
// Informers over the cluster's nodes (for Capacity), this runtime's Pods
// and the namespace's events (for Start's progress) keep what the runtime
// reads current; the control plane can read Capacity at any time without
// a request to the cluster. deploy/kube/rbac.yaml is the least the runtime
// needs.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
)

var (
	_ runtime.Runtime         = (*Runtime)(nil)
	_ runtime.CapacityWatcher = (*Runtime)(nil)
)

// Waits that the runtime bounds itself, whatever its caller's context.
const (
	// stopWait bounds how long Stop waits for the Pod to be gone (its GPUs
	// free again) after asking for its deletion.
	stopWait = 30 * time.Second
	// relinkWait bounds how long Connect waits for the agent of a running
	// Pod to link again, as it does after a control plane restart.
	relinkWait = 15 * time.Second
	// cleanupWait bounds the removal of a session whose start failed.
	cleanupWait = 30 * time.Second
)

// Runtime runs sessions as Pods on one cluster.
type Runtime struct {
	cfg    *checked
	client kubernetes.Interface
	log    *slog.Logger

	factories []informers.SharedInformerFactory
	stop      chan struct{}
	closeOnce sync.Once

	nodes  listerscorev1.NodeLister
	pods   listerscorev1.PodLister
	events cache.Indexer // events by the name of the Pod they are about

	mu      sync.Mutex
	wake    map[string]chan struct{} // Pod name -> Start waiting on it
	reports map[string]link.Report   // session id -> what its agent reported

	capMu      sync.Mutex
	capacity   []runtime.Capacity
	capChanged chan struct{}
}

// eventsByPod indexes events by the name of the Pod they are about.
const eventsByPod = "pod"

// New connects to the cluster, checks that the runtime may do what it
// needs, and starts its informers; it returns once their caches are in
// sync, so that Capacity answers at once.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	c, err := check(cfg)
	if err != nil {
		return nil, err
	}
	client := cfg.Client
	if client == nil {
		rc, err := restConfig(c.Kubeconfig, c.Context)
		if err != nil {
			return nil, fmt.Errorf("kube backend %s: %w", c.Backend, err)
		}
		// client-go's default of 5 requests a second (burst 10) throttles a
		// burst of starts, three objects each, to minutes; the API server's
		// own priority and fairness is what protects the cluster.
		rc.QPS, rc.Burst = clientQPS, clientBurst
		if client, err = kubernetes.NewForConfig(rc); err != nil {
			return nil, fmt.Errorf("kube backend %s: make the cluster's client: %w", c.Backend, err)
		}
	}
	r := &Runtime{
		cfg:        c,
		client:     client,
		log:        c.Logger.With("backend", c.Backend),
		stop:       make(chan struct{}),
		wake:       map[string]chan struct{}{},
		reports:    map[string]link.Report{},
		capChanged: make(chan struct{}, 1),
	}
	if err := r.preflight(ctx); err != nil {
		return nil, err
	}
	if err := r.startInformers(ctx); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// clientQPS and clientBurst bound the requests a kube backend sends to its
// cluster.
const (
	clientQPS   = 100
	clientBurst = 200
)

// restConfig loads the kubeconfig (or the in-cluster configuration when
// path is "").
func restConfig(path, context string) (*rest.Config, error) {
	if path == "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig is set and the server does not run in a cluster (%w); set kube.kubeconfig", err)
		}
		return rc, nil
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: path},
		&clientcmd.ConfigOverrides{CurrentContext: context},
	).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	return rc, nil
}

// preflight lists once what the informers will watch, so that a cluster
// that cannot be reached or a missing permission is one clear error now
// rather than an informer retrying forever.
func (r *Runtime) preflight(ctx context.Context) error {
	one := metav1.ListOptions{Limit: 1}
	checks := []struct {
		what string
		list func() error
	}{
		{"list nodes", func() error { _, err := r.client.CoreV1().Nodes().List(ctx, one); return err }},
		{"list Pods in namespace " + r.cfg.Namespace, func() error {
			_, err := r.client.CoreV1().Pods(r.cfg.Namespace).List(ctx, one)
			return err
		}},
		{"list events in namespace " + r.cfg.Namespace, func() error {
			_, err := r.client.CoreV1().Events(r.cfg.Namespace).List(ctx, one)
			return err
		}},
	}
	for _, c := range checks {
		err := c.list()
		switch {
		case err == nil:
		case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
			return fmt.Errorf("kube backend %s may not %s (%w); apply deploy/kube/rbac.yaml for the identity in its kubeconfig", r.cfg.Backend, c.what, err)
		default:
			return fmt.Errorf("kube backend %s: %s: %w; check that the cluster in its kubeconfig is reachable", r.cfg.Backend, c.what, err)
		}
	}
	return nil
}

// startInformers starts the node, Pod and event informers and waits for
// their caches.
func (r *Runtime) startInformers(ctx context.Context) error {
	cluster := informers.NewSharedInformerFactory(r.client, 0)
	owned := informers.NewSharedInformerFactoryWithOptions(r.client, 0,
		informers.WithNamespace(r.cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = r.selector().String() }))
	namespace := informers.NewSharedInformerFactoryWithOptions(r.client, 0, informers.WithNamespace(r.cfg.Namespace))
	r.factories = []informers.SharedInformerFactory{cluster, owned, namespace}

	nodes := cluster.Core().V1().Nodes()
	r.nodes = nodes.Lister()
	nodeChanged := func(any) { r.recount() }
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    nodeChanged,
		UpdateFunc: func(_, obj any) { r.recount() },
		DeleteFunc: nodeChanged,
	}); err != nil {
		return fmt.Errorf("kube backend %s: watch nodes: %w", r.cfg.Backend, err)
	}

	pods := owned.Core().V1().Pods()
	r.pods = pods.Lister()
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { r.wakeFor(objectName(obj)) },
		UpdateFunc: func(_, obj any) { r.wakeFor(objectName(obj)) },
		DeleteFunc: func(obj any) { r.wakeFor(objectName(obj)) },
	}); err != nil {
		return fmt.Errorf("kube backend %s: watch Pods: %w", r.cfg.Backend, err)
	}

	events := namespace.Core().V1().Events().Informer()
	if err := events.AddIndexers(cache.Indexers{eventsByPod: func(obj any) ([]string, error) {
		if e, ok := obj.(*corev1.Event); ok && e.InvolvedObject.Kind == "Pod" {
			return []string{e.InvolvedObject.Name}, nil
		}
		return nil, nil
	}}); err != nil {
		return fmt.Errorf("kube backend %s: index events: %w", r.cfg.Backend, err)
	}
	r.events = events.GetIndexer()
	eventChanged := func(obj any) {
		if e, ok := obj.(*corev1.Event); ok && e.InvolvedObject.Kind == "Pod" {
			r.wakeFor(e.InvolvedObject.Name)
		}
	}
	if _, err := events.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    eventChanged,
		UpdateFunc: func(_, obj any) { eventChanged(obj) },
	}); err != nil {
		return fmt.Errorf("kube backend %s: watch events: %w", r.cfg.Backend, err)
	}

	for _, f := range r.factories {
		f.Start(r.stop)
	}
	for _, f := range r.factories {
		for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return fmt.Errorf("kube backend %s: the cluster's %v did not load before %w", r.cfg.Backend, typ, context.Cause(ctx))
			}
		}
	}
	r.recount()
	return nil
}

// objectName is the name of an informer's object, also of a deleted one
// whose final state was missed.
func objectName(obj any) string {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if m, ok := obj.(metav1.Object); ok {
		return m.GetName()
	}
	return ""
}

// Close stops the informers. Sessions keep running.
func (r *Runtime) Close() {
	r.closeOnce.Do(func() {
		close(r.stop)
		for _, f := range r.factories {
			f.Shutdown()
		}
	})
}

// Name is "kube".
func (r *Runtime) Name() string { return "kube" }

// wakeFor tells a Start waiting on the Pod named name to look again.
func (r *Runtime) wakeFor(name string) {
	r.mu.Lock()
	ch := r.wake[name]
	r.mu.Unlock()
	if ch != nil {
		select {
		case ch <- struct{}{}:
		default: // already told
		}
	}
}

// watchPod returns a channel that receives when the Pod named name or its
// events change, and a function that stops it.
func (r *Runtime) watchPod(name string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	r.mu.Lock()
	r.wake[name] = ch
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		if r.wake[name] == ch {
			delete(r.wake, name)
		}
		r.mu.Unlock()
	}
}

// Connect opens a stream to the session's agent over its link, if the
// session's Pod is this runtime's: the hub may hold the links of other
// backends' sessions too. After a control plane restart the agent of a
// running Pod links again within seconds; Connect waits for it rather
// than call the session lost.
func (r *Runtime) Connect(ctx context.Context, id string) (net.Conn, error) {
	if !runtime.ValidID(id) {
		return nil, fmt.Errorf("connect to session %q: %w", id, runtime.ErrNotFound)
	}
	p, err := r.pods.Pods(r.cfg.Namespace).Get(podName(id))
	if err != nil || !r.owned(p.Labels) {
		return nil, fmt.Errorf("connect to session %s: no Pod of kube backend %s holds it: %w", id, r.cfg.Backend, runtime.ErrNotFound)
	}
	if !r.cfg.Link.Linked(id) && live(p) {
		wctx, cancel := context.WithTimeout(ctx, relinkWait)
		_, err := r.cfg.Link.WaitLinked(wctx, id)
		cancel()
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("connect to session %s: %w", id, ctx.Err())
		}
	}
	return r.cfg.Link.Dial(ctx, id)
}

// live reports whether a Pod still counts as a session: not ended, not
// being deleted.
func live(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// Stop ends the session's link, deletes its Pod, Secret and NetworkPolicy
// (only those carrying this runtime's labels) and waits until the Pod is
// gone, so that its GPUs are free when Stop returns.
func (r *Runtime) Stop(ctx context.Context, id string) error {
	if !runtime.ValidID(id) {
		return nil // no such session could have been started
	}
	r.mu.Lock()
	delete(r.reports, id)
	r.mu.Unlock()
	deleted, err := r.remove(ctx, id, terminationGrace/2)
	if err != nil {
		return err
	}
	if deleted == nil {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, stopWait)
	defer cancel()
	if err := r.waitGone(wctx, id, deleted.UID); err != nil {
		r.log.Warn("session Pod not gone yet after Stop", "session_id", id, "err", err)
	}
	return nil
}

// remove ends the session's link and deletes its objects that carry this
// runtime's labels, the Pod with grace seconds to end, and returns the Pod
// it deleted (nil when there was none). A session whose Pod is another's
// (another backend or installation sharing the hub) keeps its link.
func (r *Runtime) remove(ctx context.Context, id string, grace int64) (*corev1.Pod, error) {
	name := podName(id)
	ns := r.cfg.Namespace
	var errs []error
	pod, err := r.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	var deleted *corev1.Pod
	if apierrors.IsNotFound(err) || (err == nil && r.owned(pod.Labels)) {
		r.cfg.Link.Forget(id)
	}
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		errs = append(errs, fmt.Errorf("get Pod %s/%s: %w", ns, name, err))
	case r.owned(pod.Labels):
		err := r.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: &grace,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		switch {
		case err == nil:
			deleted = pod
		case !apierrors.IsNotFound(err) && !apierrors.IsConflict(err):
			errs = append(errs, fmt.Errorf("delete Pod %s/%s: %w", ns, name, err))
		}
	}
	secret, err := r.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		errs = append(errs, fmt.Errorf("get Secret %s/%s: %w", ns, name, err))
	case r.owned(secret.Labels):
		if err := r.client.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &secret.UID},
		}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("delete Secret %s/%s: %w", ns, name, err))
		}
	}
	policy, err := r.client.NetworkingV1().NetworkPolicies(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		errs = append(errs, fmt.Errorf("get NetworkPolicy %s/%s: %w", ns, name, err))
	case r.owned(policy.Labels):
		if err := r.client.NetworkingV1().NetworkPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &policy.UID},
		}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("delete NetworkPolicy %s/%s: %w", ns, name, err))
		}
	}
	if len(errs) > 0 {
		return deleted, fmt.Errorf("stop session %s on kube backend %s: %w", id, r.cfg.Backend, errors.Join(errs...))
	}
	return deleted, nil
}

// waitGone waits until the informer no longer holds the Pod with uid.
func (r *Runtime) waitGone(ctx context.Context, id string, uid types.UID) error {
	name := podName(id)
	wake, done := r.watchPod(name)
	defer done()
	for {
		p, err := r.pods.Pods(r.cfg.Namespace).Get(name)
		if apierrors.IsNotFound(err) || (err == nil && p.UID != uid) {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("wait for Pod %s to be deleted: %w", name, context.Cause(ctx))
		}
	}
}

// List returns the sessions whose Pods exist, carry this runtime's labels
// and have neither ended nor begun to be deleted. It asks the cluster
// rather than the informer, so that a Pod just stopped or deleted is never
// listed.
func (r *Runtime) List(ctx context.Context) ([]runtime.Instance, error) {
	pods, err := r.client.CoreV1().Pods(r.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: r.selector().String()})
	if err != nil {
		return nil, fmt.Errorf("list the Pods of kube backend %s: %w", r.cfg.Backend, err)
	}
	var out []runtime.Instance
	for i := range pods.Items {
		p := &pods.Items[i]
		id := p.Annotations[annotationSession]
		if id == "" || !r.owned(p.Labels) || !live(p) {
			continue
		}
		started := p.CreationTimestamp.Time
		if p.Status.StartTime != nil {
			started = p.Status.StartTime.Time
		}
		out = append(out, runtime.Instance{
			SessionID: id,
			StartedAt: started,
			Placement: runtime.Placement{
				Node:    p.Spec.NodeName,
				Devices: r.devices(ctx, id),
				Handle:  r.cfg.Namespace + "/" + p.Name,
			},
		})
	}
	return out, nil
}

// devices are the GPUs the session's agent reported, if it is linked or
// linked to this runtime since it started.
func (r *Runtime) devices(ctx context.Context, id string) []string {
	r.mu.Lock()
	rep, ok := r.reports[id]
	r.mu.Unlock()
	if ok {
		return rep.Devices
	}
	if !r.cfg.Link.Linked(id) {
		return nil
	}
	now, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	rep, err := r.cfg.Link.WaitLinked(now, id)
	if err != nil {
		return nil
	}
	r.mu.Lock()
	r.reports[id] = rep
	r.mu.Unlock()
	return rep.Devices
}
