//go:build linux && !agentonly

package kube

import (
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"

	"github.com/devgpu/devgpu/internal/link"
)

// DefaultNamespace is where session Pods live when Config.Namespace is "".
const DefaultNamespace = "devgpu"

// defaultWorkspaceSize is a workspace claim's size when Config.WorkspaceSize
// is "".
const defaultWorkspaceSize = "50Gi"

// Config is one Kubernetes backend: a cluster (a kubeconfig and context),
// the namespace its sessions live in, and how devgpu's GPU types map onto
// the cluster's nodes.
type Config struct {
	// Backend is the backend's name (label devgpu.dev/backend, logs).
	Backend string
	// Installation is this installation's id (label
	// devgpu.dev/installation); List, Stop and reconcile touch only Pods
	// that carry it, so that two installations share a cluster safely.
	Installation string
	// Kubeconfig is the path of a kubeconfig file; "" uses the in-cluster
	// configuration (the control plane runs in a Pod).
	Kubeconfig string
	// Context is the kubeconfig context; "" is its current one.
	Context string
	// Namespace is where session Pods live (default "devgpu"); it must
	// exist.
	Namespace string
	// Region is the region of nodes without the
	// topology.kubernetes.io/region label.
	Region string
	// GPUTypes maps a node's nvidia.com/gpu.product label (from GPU Feature
	// Discovery) to a devgpu GPU type, such as "Tesla-T4": "t4".
	GPUTypes map[string]string
	// DefaultGPUType is the type of GPU nodes whose product label is
	// missing or not mapped; "" offers no such node.
	DefaultGPUType string
	// AgentImage is an image holding the static agent at /devgpu-agent;
	// an init container copies it into the session's Pod.
	AgentImage string
	// DefaultImage is the session image when Spec.Image is "".
	DefaultImage string
	// LinkURL is the https:// URL of the control plane's link endpoint as
	// Pods reach it; the agent dials <LinkURL>/api/v1/agent/link.
	LinkURL string
	// LinkCA is the PEM the agents trust for LinkURL; nil means the
	// system's roots.
	LinkCA []byte
	// ControlPlaneCIDRs are always allowed as egress, on LinkURL's port
	// (default: LinkURL's host when it is an IP address, as a /32).
	ControlPlaneCIDRs []string
	// Link is where agents' links arrive; Connect opens streams through it.
	Link *link.Hub
	// RuntimeClassName is the Pods' runtimeClassName ("" = the cluster's
	// default), such as "nvidia".
	RuntimeClassName string
	// Tolerations are added to every Pod (GPU nodes are usually tainted).
	Tolerations []corev1.Toleration
	// NodeSelector is added to the GPU product and region selection.
	NodeSelector map[string]string
	// ImagePullSecrets name Secrets in Namespace for private registries.
	ImagePullSecrets []string
	// Resources are the CPU and memory requests and limits per GPU type.
	Resources map[string]Resources
	// StorageClass, when set, gives each user in each project a
	// PersistentVolumeClaim of that class for their workspace; "" mounts
	// no workspace.
	StorageClass string
	// WorkspaceSize is each workspace claim's size (default "50Gi").
	WorkspaceSize string
	// UserNamespaces runs Pods with hostUsers: false (clusters that
	// support user namespaces).
	UserNamespaces bool
	// Logger is where the runtime logs; nil is slog.Default().
	Logger *slog.Logger
	// Client talks to the cluster; nil builds one from Kubeconfig and
	// Context.
	Client kubernetes.Interface
}

// Resources are a GPU type's CPU and memory requests and limits, as
// Kubernetes quantities ("2", "500m", "16Gi"); "" leaves one unset.
type Resources struct {
	CPURequest, CPULimit, MemoryRequest, MemoryLimit string
}

// checked is a Config validated, with its defaults filled in and its text
// parsed.
type checked struct {
	Config
	linkPort      int32
	controlPlane  []netip.Prefix
	linkHostIsIP  bool
	resources     map[string]corev1.ResourceRequirements
	workspaceSize resource.Quantity
	// products lists, per GPU type, the product labels mapped to it.
	products map[string][]string
}

// check validates cfg and fills in its defaults. Each error names the
// field and the fix.
func check(cfg Config) (*checked, error) {
	c := &checked{Config: cfg}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.WorkspaceSize == "" {
		c.WorkspaceSize = defaultWorkspaceSize
	}
	if c.Backend == "" {
		return nil, fmt.Errorf("kube: the backend has no name; give it one in the server config's backends")
	}
	if errs := validation.IsValidLabelValue(c.Backend); len(errs) > 0 || c.Backend == "" {
		return nil, fmt.Errorf("kube: backend name %q cannot be a Kubernetes label value (%s); use letters, digits, '-', '_' and '.', at most 63", c.Backend, errs[0])
	}
	if c.Installation == "" {
		return nil, fmt.Errorf("kube backend %s: the installation id is empty; the server sets it from its store, so this is a bug in the caller", c.Backend)
	}
	if errs := validation.IsValidLabelValue(c.Installation); len(errs) > 0 {
		return nil, fmt.Errorf("kube backend %s: installation id %q cannot be a Kubernetes label value (%s)", c.Backend, c.Installation, errs[0])
	}
	if errs := validation.IsDNS1123Label(c.Namespace); len(errs) > 0 {
		return nil, fmt.Errorf("kube backend %s: namespace %q is not a valid namespace name (%s); fix kube.namespace", c.Backend, c.Namespace, errs[0])
	}
	if c.AgentImage == "" {
		return nil, fmt.Errorf("kube backend %s: no agent image; set kube.agent_image to an image holding the static agent at /devgpu-agent (scripts/agentimage builds one)", c.Backend)
	}
	if c.DefaultImage == "" {
		return nil, fmt.Errorf("kube backend %s: no default session image; set kube.image", c.Backend)
	}
	if c.Link == nil {
		return nil, fmt.Errorf("kube backend %s: no link hub to receive its agents; this is a bug in the caller", c.Backend)
	}
	if err := c.checkLink(); err != nil {
		return nil, err
	}
	if len(c.GPUTypes) == 0 && c.DefaultGPUType == "" {
		return nil, fmt.Errorf("kube backend %s offers no GPU type; map node products to types in kube.gpu_types (such as \"Tesla-T4\": \"t4\") or set kube.default_gpu_type", c.Backend)
	}
	c.products = map[string][]string{}
	for product, typ := range c.GPUTypes {
		if typ == "" {
			return nil, fmt.Errorf("kube backend %s: GPU product %q maps to an empty type; name its devgpu type in kube.gpu_types", c.Backend, product)
		}
		if errs := validation.IsValidLabelValue(product); len(errs) > 0 || product == "" {
			return nil, fmt.Errorf("kube backend %s: GPU product %q in kube.gpu_types cannot be a node label value; copy it from the nodes' nvidia.com/gpu.product label", c.Backend, product)
		}
		c.products[typ] = append(c.products[typ], product)
	}
	for _, ps := range c.products {
		slices.Sort(ps)
	}
	c.resources = map[string]corev1.ResourceRequirements{}
	for typ, r := range c.Resources {
		req, err := r.requirements()
		if err != nil {
			return nil, fmt.Errorf("kube backend %s: resources of GPU type %s: %w", c.Backend, typ, err)
		}
		c.resources[typ] = req
	}
	if c.StorageClass != "" {
		q, err := resource.ParseQuantity(c.WorkspaceSize)
		if err != nil || q.Sign() <= 0 {
			return nil, fmt.Errorf("kube backend %s: workspace size %q is not a positive quantity; write it like \"50Gi\"", c.Backend, c.WorkspaceSize)
		}
		c.workspaceSize = q
	}
	for _, s := range c.ImagePullSecrets {
		if errs := validation.IsDNS1123Subdomain(s); len(errs) > 0 {
			return nil, fmt.Errorf("kube backend %s: image pull secret %q is not a Secret name (%s)", c.Backend, s, errs[0])
		}
	}
	return c, nil
}

// checkLink parses LinkURL and the control plane's addresses, which every
// session's NetworkPolicy lets through.
func (c *checked) checkLink() error {
	u, err := url.Parse(c.LinkURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "wss") {
		return fmt.Errorf("kube backend %s: link URL %q is not an https:// URL; set kube.link_url to the control plane's address as Pods reach it, such as https://10.0.0.5:8443", c.Backend, c.LinkURL)
	}
	port := 443
	if p := u.Port(); p != "" {
		port, err = strconv.Atoi(p)
		if err != nil || port < 1 || port > 65535 {
			return fmt.Errorf("kube backend %s: link URL %q has an invalid port", c.Backend, c.LinkURL)
		}
	}
	c.linkPort = int32(port)
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		c.linkHostIsIP = true
		if len(c.ControlPlaneCIDRs) == 0 {
			a = a.Unmap()
			c.ControlPlaneCIDRs = []string{netip.PrefixFrom(a, a.BitLen()).String()}
		}
	}
	if len(c.ControlPlaneCIDRs) == 0 {
		return fmt.Errorf("kube backend %s: link URL %s names a host, so the sessions' network policy cannot tell its addresses; list them in kube.control_plane_cidrs", c.Backend, c.LinkURL)
	}
	for _, s := range c.ControlPlaneCIDRs {
		p, err := parseCIDR(s)
		if err != nil {
			return fmt.Errorf("kube backend %s: control plane CIDR %q is neither a CIDR nor an IP address; fix kube.control_plane_cidrs", c.Backend, s)
		}
		c.controlPlane = append(c.controlPlane, p)
	}
	return nil
}

// parseCIDR reads a CIDR or a single address (as its /32 or /128).
func parseCIDR(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// requirements parses r into a container's requests and limits.
func (r Resources) requirements() (corev1.ResourceRequirements, error) {
	req := corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for _, f := range []struct {
		text string
		name corev1.ResourceName
		into corev1.ResourceList
		what string
	}{
		{r.CPURequest, corev1.ResourceCPU, req.Requests, "cpu_request"},
		{r.CPULimit, corev1.ResourceCPU, req.Limits, "cpu_limit"},
		{r.MemoryRequest, corev1.ResourceMemory, req.Requests, "memory_request"},
		{r.MemoryLimit, corev1.ResourceMemory, req.Limits, "memory_limit"},
	} {
		if f.text == "" {
			continue
		}
		q, err := resource.ParseQuantity(f.text)
		if err != nil || q.Sign() <= 0 {
			return req, fmt.Errorf("%s %q is not a positive quantity; write it like \"2\", \"500m\" or \"16Gi\"", f.what, f.text)
		}
		f.into[f.name] = q
	}
	return req, nil
}

// offers reports whether the backend has nodes of GPU type typ at all.
func (c *checked) offers(typ string) bool {
	return len(c.products[typ]) > 0 || (typ != "" && typ == c.DefaultGPUType)
}
