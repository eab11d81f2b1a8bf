//go:build linux && !agentonly

package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
)

// lookupHost resolves allow-list names; tests replace it.
var lookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// Start creates the session's NetworkPolicy, Secret and Pod (and its
// workspace's claim if missing), reports through spec.Progress why the Pod
// is not running yet, fails at once when it never will, and returns when
// its agent has linked. A failed or cancelled start removes what it made.
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (_ runtime.Placement, err error) {
	if !runtime.ValidID(spec.SessionID) || !validDNSLabel(podName(spec.SessionID)) {
		return runtime.Placement{}, fmt.Errorf("start session: invalid session id %q", spec.SessionID)
	}
	if spec.GPU.Count > 0 && !r.cfg.offers(spec.GPU.Type) {
		return runtime.Placement{}, fmt.Errorf("kube backend %s offers no GPU of type %q; ask for one it maps in kube.gpu_types", r.cfg.Backend, spec.GPU.Type)
	}
	allowed, err := resolveEgress(ctx, spec.Egress, lookupHost)
	if err != nil {
		return runtime.Placement{}, fmt.Errorf("start session %s: %w", spec.SessionID, err)
	}
	claim := ""
	if spec.Workspace != "" && r.cfg.StorageClass != "" {
		if claim, err = r.ensureClaim(ctx, spec); err != nil {
			return runtime.Placement{}, err
		}
	}
	log := r.log.With("session_id", spec.SessionID)
	defer func() {
		if err == nil {
			return
		}
		// ctx may be what ended the start; the cleanup has its own.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupWait)
		defer cancel()
		if _, rerr := r.remove(cctx, spec.SessionID, 0); rerr != nil {
			log.Error("remove the objects of a session whose start failed", "err", rerr)
		}
	}()

	name := podName(spec.SessionID)
	ns := r.cfg.Namespace
	// The policy first, so that the Pod never runs unrestricted; the
	// Secret before the Pod, which mounts it.
	policy, err := r.client.NetworkingV1().NetworkPolicies(ns).Create(ctx, r.networkPolicy(spec, allowed), metav1.CreateOptions{})
	if err != nil {
		return runtime.Placement{}, r.createError("NetworkPolicy", spec.SessionID, err)
	}
	secret, err := r.client.CoreV1().Secrets(ns).Create(ctx, r.secret(spec), metav1.CreateOptions{})
	if err != nil {
		return runtime.Placement{}, r.createError("Secret", spec.SessionID, err)
	}
	// Watch before creating, so that no change of the Pod is missed.
	wake, unwatch := r.watchPod(name)
	defer unwatch()
	pod, err := r.client.CoreV1().Pods(ns).Create(ctx, r.pod(spec, claim), metav1.CreateOptions{})
	if err != nil {
		return runtime.Placement{}, r.createError("Pod", spec.SessionID, err)
	}
	log.Info("session Pod created", "pod", ns+"/"+name, "gpu_type", spec.GPU.Type, "gpus", spec.GPU.Count, "region", spec.GPU.Region)
	if err := r.adopt(ctx, pod, secret.UID, policy.UID); err != nil {
		return runtime.Placement{}, err
	}
	return r.await(ctx, spec, pod, wake)
}

// createError says why creating a session's object failed.
func (r *Runtime) createError(kind, id string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("start session %s: namespace %s does not exist on kube backend %s; create it (deploy/kube/rbac.yaml does)", id, r.cfg.Namespace, r.cfg.Backend)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("start session %s: kube backend %s may not create its %s (%w); apply deploy/kube/rbac.yaml", id, r.cfg.Backend, kind, err)
	case apierrors.IsAlreadyExists(err):
		return fmt.Errorf("start session %s: its %s already exists on kube backend %s; a session id was reused", id, kind, r.cfg.Backend)
	}
	return fmt.Errorf("start session %s: create its %s on kube backend %s: %w", id, kind, r.cfg.Backend, err)
}

// ensureClaim creates the workspace's claim unless it exists, and returns
// its name.
func (r *Runtime) ensureClaim(ctx context.Context, spec runtime.Spec) (string, error) {
	want := r.claim(spec)
	claims := r.client.CoreV1().PersistentVolumeClaims(r.cfg.Namespace)
	if _, err := claims.Get(ctx, want.Name, metav1.GetOptions{}); err == nil {
		return want.Name, nil
	} else if !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("start session %s: get workspace claim %s: %w", spec.SessionID, want.Name, err)
	}
	if _, err := claims.Create(ctx, want, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("start session %s: create workspace claim %s: %w", spec.SessionID, want.Name, err)
	}
	return want.Name, nil
}

// adopt makes the Pod the owner of the session's Secret and NetworkPolicy,
// so that the cluster's garbage collector removes them with the Pod, also
// when the Pod is deleted behind the runtime's back.
func (r *Runtime) adopt(ctx context.Context, pod *corev1.Pod, secret, policy types.UID) error {
	yes := true
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{
			"ownerReferences": []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID,
				BlockOwnerDeletion: nil, Controller: &yes,
			}},
		},
	})
	if err != nil {
		return err
	}
	ns := r.cfg.Namespace
	// The UIDs in the patch's preconditions make sure that what is patched
	// is what Start created.
	if _, err := r.client.CoreV1().Secrets(ns).Patch(ctx, pod.Name, types.MergePatchType, withUID(patch, secret), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("start session: make Pod %s own its Secret: %w", pod.Name, err)
	}
	if _, err := r.client.NetworkingV1().NetworkPolicies(ns).Patch(ctx, pod.Name, types.MergePatchType, withUID(patch, policy), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("start session: make Pod %s own its NetworkPolicy: %w", pod.Name, err)
	}
	return nil
}

// withUID adds metadata.uid to a merge patch: the API server refuses the
// patch (409) if the object's UID differs.
func withUID(patch []byte, uid types.UID) []byte {
	var m map[string]map[string]any
	if err := json.Unmarshal(patch, &m); err != nil {
		return patch
	}
	m["metadata"]["uid"] = uid
	b, err := json.Marshal(m)
	if err != nil {
		return patch
	}
	return b
}

// linkResult is what WaitLinked returned.
type linkResult struct {
	report link.Report
	err    error
}

// await follows the Pod until its agent links, telling spec.Progress what
// happens, and fails as soon as the Pod cannot become a session.
func (r *Runtime) await(ctx context.Context, spec runtime.Spec, created *corev1.Pod, wake <-chan struct{}) (runtime.Placement, error) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	linked := make(chan linkResult, 1)
	go func() {
		rep, err := r.cfg.Link.WaitLinked(lctx, spec.SessionID)
		linked <- linkResult{rep, err}
	}()
	name := created.Name
	seen := false
	last := ""
	for {
		pod, err := r.pods.Pods(r.cfg.Namespace).Get(name)
		switch {
		case err == nil && pod.UID == created.UID:
			seen = true
			st := r.assess(pod, spec.GPU)
			if st.fatal != "" {
				return runtime.Placement{}, r.startFailed(ctx, spec.SessionID, pod, st)
			}
			if st.progress != "" && st.progress != last && spec.Progress != nil {
				spec.Progress(st.progress, 0, 0)
			}
			last = st.progress
		case seen && (apierrors.IsNotFound(err) || err == nil):
			return runtime.Placement{}, fmt.Errorf("start session %s: its Pod %s/%s was deleted before its agent linked", spec.SessionID, r.cfg.Namespace, name)
		}
		select {
		case <-wake:
		case res := <-linked:
			if res.err != nil {
				return runtime.Placement{}, fmt.Errorf("start session %s on kube backend %s: %w (last: %s)", spec.SessionID, r.cfg.Backend, res.err, orNothing(last))
			}
			r.mu.Lock()
			r.reports[spec.SessionID] = res.report
			r.mu.Unlock()
			node := res.report.Node
			if pod, err := r.pods.Pods(r.cfg.Namespace).Get(name); err == nil && pod.Spec.NodeName != "" {
				node = pod.Spec.NodeName
			}
			return runtime.Placement{Node: node, Devices: res.report.Devices, Handle: r.cfg.Namespace + "/" + name}, nil
		case <-ctx.Done():
			return runtime.Placement{}, fmt.Errorf("start session %s on kube backend %s: %w (last: %s)", spec.SessionID, r.cfg.Backend, context.Cause(ctx), orNothing(last))
		}
	}
}

func orNothing(s string) string {
	if s == "" {
		return "the Pod was not seen yet"
	}
	return s
}

// startFailed is the error of a start that cannot succeed, with the end of
// the session container's log when the Pod ended.
func (r *Runtime) startFailed(ctx context.Context, id string, pod *corev1.Pod, st status) error {
	msg := st.fatal
	if st.ended {
		if tail := r.logTail(ctx, pod); tail != "" {
			msg += "; its log ends: " + tail
		}
	}
	return errors.New("start session " + id + ": " + msg)
}
