//go:build linux && !agentonly

package cli

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/kube"
)

// kubeRuntime builds a kube backend's runtime: Pods in a cluster whose
// agents link to hub. devCA is the CA file of the server's --dev
// certificate, if it made one: the agents trust it when the backend names
// no link_ca_file. close ends the runtime's watches.
func kubeRuntime(ctx context.Context, name string, c *kubeBackendConfig, installation string, hub *link.Hub, devCA string, log *slog.Logger) (rt runtime.Runtime, close func(), err error) {
	ca, err := readLinkCA(name, "kube.link_ca_file", c.LinkCAFile, devCA, hub)
	if err != nil {
		return nil, nil, err
	}
	tolerations := make([]corev1.Toleration, len(c.Tolerations))
	for i, t := range c.Tolerations {
		tolerations[i] = corev1.Toleration{Key: t.Key, Operator: corev1.TolerationOperator(t.Operator), Value: t.Value,
			Effect: corev1.TaintEffect(t.Effect), TolerationSeconds: t.TolerationSeconds}
	}
	resources := make(map[string]kube.Resources, len(c.Resources))
	for typ, r := range c.Resources {
		resources[typ] = kube.Resources{CPURequest: r.CPURequest, CPULimit: r.CPULimit, MemoryRequest: r.MemoryRequest, MemoryLimit: r.MemoryLimit}
	}
	k, err := kube.New(ctx, kube.Config{
		Backend: name, Installation: installation,
		Kubeconfig: c.Kubeconfig, Context: c.Context, Namespace: c.Namespace, Region: c.Region,
		GPUTypes: c.GPUTypes, DefaultGPUType: c.DefaultGPUType,
		AgentImage: c.AgentImage, DefaultImage: c.Image,
		LinkURL: c.LinkURL, LinkCA: ca, ControlPlaneCIDRs: c.ControlPlaneCIDRs, Link: hub,
		RuntimeClassName: c.RuntimeClass, Tolerations: tolerations, NodeSelector: c.NodeSelector,
		ImagePullSecrets: c.ImagePullSecrets, Resources: resources,
		StorageClass: c.StorageClass, WorkspaceSize: c.WorkspaceSize, UserNamespaces: c.UserNamespaces,
		Logger: log.With("backend", name),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("backend %s: %w", name, err)
	}
	return k, k.Close, nil
}
