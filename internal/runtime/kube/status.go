//go:build linux && !agentonly

package kube

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/devgpu/devgpu/internal/runtime"
)

// status is where a starting session's Pod stands, in plain words: what
// it waits for, or why it can never run.
type status struct {
	progress string
	fatal    string
	ended    bool // the Pod ran and ended: its log says more
}

// pullFailures are the waiting reasons of a container whose image cannot
// be had: retrying will not make the image appear.
var pullFailures = []string{"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}

// configFailures are the waiting reasons of a container the node cannot
// create as specified.
var configFailures = []string{"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}

// assess reads where the Pod stands from its status and events.
func (r *Runtime) assess(p *corev1.Pod, req runtime.GPURequest) status {
	if p.DeletionTimestamp != nil {
		return status{fatal: fmt.Sprintf("its Pod %s/%s is being deleted, by someone else, before its agent linked", p.Namespace, p.Name)}
	}
	switch p.Status.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return status{fatal: fmt.Sprintf("its Pod %s/%s ended before its agent linked: %s", p.Namespace, p.Name, ending(p)), ended: true}
	}
	images := map[string]string{}
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		images[c.Name] = c.Image
	}
	for _, cs := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		w := cs.State.Waiting
		if w == nil {
			continue
		}
		image := images[cs.Name]
		switch {
		case slices.Contains(pullFailures, w.Reason) && cs.Name == initName:
			return status{fatal: fmt.Sprintf("the agent image %s was not found or cannot be pulled: %s; check kube.agent_image", image, oneLine(w.Message, w.Reason))}
		case slices.Contains(pullFailures, w.Reason):
			return status{fatal: fmt.Sprintf("image %s was not found or cannot be pulled: %s", image, oneLine(w.Message, w.Reason))}
		case slices.Contains(configFailures, w.Reason):
			return status{fatal: fmt.Sprintf("the cluster cannot create the session's %s container: %s", cs.Name, oneLine(w.Message, w.Reason))}
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type != corev1.PodScheduled || c.Status == corev1.ConditionTrue {
			continue
		}
		msg := schedulerMessage(c.Message)
		if c.Reason == corev1.PodReasonUnschedulable {
			if !r.anyNodeFits(req) {
				return status{fatal: fmt.Sprintf("no node of kube backend %s can ever hold %s: %s", r.cfg.Backend, wanted(req), orReason(msg, "no node matches"))}
			}
			return status{progress: fmt.Sprintf("waiting for %s: %s", free(req), orReason(msg, "the cluster has none free"))}
		}
		return status{progress: "waiting to be scheduled: " + orReason(msg, c.Reason)}
	}
	if p.Spec.NodeName == "" {
		return status{progress: "waiting to be scheduled"}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running != nil {
			return status{progress: "waiting for the session's agent to connect"}
		}
	}
	if e := r.lastEvent(p); e != nil {
		switch e.Reason {
		case "Pulling":
			return status{progress: "pulling " + strings.TrimPrefix(strings.TrimSpace(e.Message), "Pulling ")}
		case "FailedMount", "FailedAttachVolume":
			return status{progress: "waiting for a volume: " + oneLine(e.Message, e.Reason)}
		}
	}
	return status{progress: "starting the session on node " + p.Spec.NodeName}
}

// lastEvent is the latest event about this Pod (by UID), if any.
func (r *Runtime) lastEvent(p *corev1.Pod) *corev1.Event {
	objs, err := r.events.ByIndex(eventsByPod, p.Name)
	if err != nil {
		return nil
	}
	var last *corev1.Event
	for _, o := range objs {
		e, ok := o.(*corev1.Event)
		if !ok || e.InvolvedObject.UID != p.UID {
			continue
		}
		if last == nil || eventTime(e).After(eventTime(last)) {
			last = e
		}
	}
	return last
}

// eventTime is when an event last happened, whichever API wrote it.
func eventTime(e *corev1.Event) time.Time {
	for _, t := range []time.Time{e.EventTime.Time, e.LastTimestamp.Time, e.FirstTimestamp.Time} {
		if !t.IsZero() {
			return t
		}
	}
	return e.CreationTimestamp.Time
}

// ending says how an ended Pod ended: its containers' exit codes and
// reasons, else the Pod's.
func ending(p *corev1.Pod) string {
	var parts []string
	for _, cs := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		if t := cs.State.Terminated; t != nil && (t.ExitCode != 0 || cs.Name == containerName) {
			s := fmt.Sprintf("container %s exited with status %d", cs.Name, t.ExitCode)
			if t.Reason != "" {
				s += " (" + t.Reason + ")"
			}
			if t.Message != "" {
				s += ": " + oneLine(t.Message, "")
			}
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return orReason(oneLine(p.Status.Message, ""), orReason(p.Status.Reason, string(p.Status.Phase)))
	}
	return strings.Join(parts, "; ")
}

// logTail is the last lines of the session container's log, on one line.
func (r *Runtime) logTail(ctx context.Context, p *corev1.Pod) string {
	lines, limit := int64(10), int64(2048)
	b, err := r.client.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{
		Container: containerName, TailLines: &lines, LimitBytes: &limit,
	}).DoRaw(ctx)
	if err != nil {
		return ""
	}
	return oneLine(string(b), "")
}

// schedulerMessage drops the preemption half of a scheduler's message,
// which says only that evicting other Pods would not help either.
func schedulerMessage(m string) string {
	if i := strings.Index(m, " preemption:"); i >= 0 {
		m = m[:i]
	}
	return strings.TrimSuffix(strings.TrimSpace(m), ".")
}

// oneLine joins a message's lines, or is fallback when it is empty.
func oneLine(s, fallback string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return fallback
	}
	return s
}

func orReason(s, reason string) string {
	if s == "" {
		return reason
	}
	return s
}

// free says what a waiting session needs: "a free a100 in westus3".
func free(req runtime.GPURequest) string {
	s := "a free " + req.Type
	if req.Count > 1 {
		s = fmt.Sprintf("%d free %s GPUs", req.Count, req.Type)
	}
	if req.Region != "" {
		s += " in " + req.Region
	}
	return s
}

// wanted says what a session asks for: "2 a100 GPUs in westus3".
func wanted(req runtime.GPURequest) string {
	s := fmt.Sprintf("%d %s GPU", req.Count, req.Type)
	if req.Count != 1 {
		s += "s"
	}
	if req.Region != "" {
		s += " in " + req.Region
	}
	return s
}
