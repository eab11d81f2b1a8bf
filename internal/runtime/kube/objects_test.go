//go:build linux && !agentonly

package kube

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// testConfig is a backend over client, with two mapped products and a
// default type, in region r1 for unlabelled nodes.
func testConfig(client kubernetes.Interface, hub *link.Hub) Config {
	return Config{
		Backend:        "west",
		Installation:   "inst-a",
		Namespace:      "devgpu",
		Region:         "r1",
		GPUTypes:       map[string]string{"Tesla-T4": "t4", "NVIDIA-A100-SXM4-80GB": "a100", "NVIDIA-A100-PCIE-80GB": "a100"},
		DefaultGPUType: "",
		AgentImage:     "registry.example.com/devgpu/agent:v1",
		DefaultImage:   "k8s.local/busybox:1",
		LinkURL:        "https://10.0.0.5:8443",
		LinkCA:         []byte("-----BEGIN CERTIFICATE-----\nTESTCA\n-----END CERTIFICATE-----\n"),
		Link:           hub,
		Tolerations:    []corev1.Toleration{{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
		Resources:      map[string]Resources{"t4": {CPURequest: "2", CPULimit: "4", MemoryRequest: "8Gi", MemoryLimit: "16Gi"}},
		Logger:         slog.New(slog.DiscardHandler),
		Client:         client,
	}
}

// newTestRuntime is a runtime over a fake cluster, closed with the test.
func newTestRuntime(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	r, err := New(testutil.Context(t, testutil.WaitMedium), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

func testSpec(id string) runtime.Spec {
	return runtime.Spec{
		SessionID: id, Project: "ml-research", User: "alice@example.com",
		GPU:            runtime.GPURequest{Type: "t4", Region: "r1", Count: 2},
		Env:            map[string]string{"FOO": "bar"},
		AgentSecret:    "agent-secret-" + strings.Repeat("5e", 16),
		LinkCredential: "link-cred-" + strings.Repeat("c1", 16),
		Egress:         sdk.Egress{Mode: sdk.EgressNone},
		IdleExit:       90 * time.Second,
	}
}

func TestPodObject(t *testing.T) {
	t.Parallel()
	r := newTestRuntime(t, testConfig(newFakeClient(), link.NewHub(nil)))
	spec := testSpec("s-1")
	p := r.pod(spec, "")

	if p.Name != "devgpu-s-1" || p.Namespace != "devgpu" {
		t.Errorf("pod %s/%s, want devgpu/devgpu-s-1", p.Namespace, p.Name)
	}
	for k, v := range map[string]string{
		labelInstallation: "inst-a", labelBackend: "west", labelSession: "s-1", labelProject: "ml-research",
	} {
		if p.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, p.Labels[k], v)
		}
	}
	for k, v := range p.Labels {
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			t.Errorf("label %s=%q is not a valid label value: %v", k, v, errs)
		}
	}
	if p.Annotations[annotationSession] != "s-1" {
		t.Errorf("session annotation %q", p.Annotations[annotationSession])
	}

	ps := p.Spec
	if ps.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy %q", ps.RestartPolicy)
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("the service account token is mounted")
	}
	if ps.EnableServiceLinks == nil || *ps.EnableServiceLinks {
		t.Error("service links are enabled")
	}
	if ps.HostUsers != nil {
		t.Error("hostUsers set without Config.UserNamespaces")
	}
	if ps.SecurityContext == nil || ps.SecurityContext.SeccompProfile == nil || ps.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("the Pod has no RuntimeDefault seccomp profile")
	}
	if !slices.Equal(ps.Tolerations, testConfig(nil, nil).Tolerations) {
		t.Errorf("tolerations %v", ps.Tolerations)
	}

	if len(ps.Containers) != 1 || len(ps.InitContainers) != 1 {
		t.Fatalf("%d containers and %d init containers, want 1 and 1", len(ps.Containers), len(ps.InitContainers))
	}
	c, ic := ps.Containers[0], ps.InitContainers[0]
	if ic.Image != "registry.example.com/devgpu/agent:v1" || !slices.Equal(ic.Command, []string{"/devgpu-agent", "agent", "install", "/devgpu/devgpu-agent"}) {
		t.Errorf("init container %s runs %v", ic.Image, ic.Command)
	}
	if c.Image != "k8s.local/busybox:1" {
		t.Errorf("session image %q, want the default", c.Image)
	}
	wantCmd := []string{"/devgpu/devgpu-agent", "agent", "--session", "s-1", "--link", "https://10.0.0.5:8443",
		"--secret-file", "/var/run/devgpu/agent-secret", "--link-credential-file", "/var/run/devgpu/link-credential",
		"--link-ca-file", "/var/run/devgpu/link-ca", "--idle-exit", "1m30s"}
	if !slices.Equal(c.Command, wantCmd) {
		t.Errorf("session command\n%v, want\n%v", c.Command, wantCmd)
	}
	for _, sc := range []*corev1.SecurityContext{c.SecurityContext, ic.SecurityContext} {
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("a container may escalate privileges")
			continue
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("capabilities dropped: %v", sc.Capabilities)
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Error("a container has no RuntimeDefault seccomp profile")
		}
	}
	for _, bad := range []corev1.Capability{"NET_RAW", "MKNOD", "SYS_ADMIN"} {
		if slices.Contains(c.SecurityContext.Capabilities.Add, bad) {
			t.Errorf("the session gets %s", bad)
		}
	}
	if !slices.Contains(c.SecurityContext.Capabilities.Add, "SETUID") || len(ic.SecurityContext.Capabilities.Add) != 0 {
		t.Errorf("capabilities added: session %v, init %v", c.SecurityContext.Capabilities.Add, ic.SecurityContext.Capabilities.Add)
	}

	// The credentials are files of the Secret, never in env or args.
	for _, secret := range []string{spec.AgentSecret, spec.LinkCredential} {
		for _, a := range append(slices.Clone(c.Command), c.Args...) {
			if strings.Contains(a, secret) {
				t.Errorf("argument %q holds a credential", a)
			}
		}
		for _, e := range c.Env {
			if strings.Contains(e.Value, secret) {
				t.Errorf("env %s holds a credential", e.Name)
			}
		}
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	for k, v := range map[string]string{"DEVGPU_SESSION_ID": "s-1", "DEVGPU_PROJECT": "ml-research", "DEVGPU_USER": "alice@example.com", "DEVGPU_GPU_TYPE": "t4", "FOO": "bar"} {
		if env[k].Value != v {
			t.Errorf("env %s = %q, want %q", k, env[k].Value, v)
		}
	}
	if _, ok := env["CUDA_VISIBLE_DEVICES"]; ok {
		t.Error("the runtime sets CUDA_VISIBLE_DEVICES; the device plugin and the agent choose it")
	}
	if f := env["DEVGPU_NODE"].ValueFrom; f == nil || f.FieldRef == nil || f.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("DEVGPU_NODE is not the Pod's node: %+v", env["DEVGPU_NODE"])
	}

	var secretVol *corev1.Volume
	for i := range ps.Volumes {
		if ps.Volumes[i].Secret != nil {
			secretVol = &ps.Volumes[i]
		}
	}
	if secretVol == nil || secretVol.Secret.SecretName != "devgpu-s-1" || secretVol.Secret.DefaultMode == nil || *secretVol.Secret.DefaultMode != 0o400 {
		t.Fatalf("secret volume %+v, want devgpu-s-1 with mode 0400", secretVol)
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.Name == secretVol.Name {
			mounted = m.MountPath == "/var/run/devgpu" && m.ReadOnly
		}
	}
	if !mounted {
		t.Error("the Secret is not mounted read-only at /var/run/devgpu")
	}

	// Resources: the GPUs, and the type's CPU and memory.
	if q := c.Resources.Limits["nvidia.com/gpu"]; q.Value() != 2 {
		t.Errorf("nvidia.com/gpu limit %v, want 2", q.String())
	}
	if q := c.Resources.Requests[corev1.ResourceCPU]; q.Cmp(resource.MustParse("2")) != 0 {
		t.Errorf("cpu request %v", q.String())
	}
	if q := c.Resources.Limits[corev1.ResourceMemory]; q.Cmp(resource.MustParse("16Gi")) != 0 {
		t.Errorf("memory limit %v", q.String())
	}
	// The config's own ResourceList is not changed by a Pod's GPUs.
	if _, ok := r.cfg.resources["t4"].Limits["nvidia.com/gpu"]; ok {
		t.Error("building a Pod changed the configured resources")
	}

	// Node selection: t4 products in r1, or unlabelled nodes (region r1).
	terms := ps.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(terms) != 2 {
		t.Fatalf("node selector terms %+v, want 2", terms)
	}
	want := [][]corev1.NodeSelectorRequirement{
		{{Key: labelGPUProduct, Operator: corev1.NodeSelectorOpIn, Values: []string{"Tesla-T4"}}, {Key: labelRegion, Operator: corev1.NodeSelectorOpIn, Values: []string{"r1"}}},
		{{Key: labelGPUProduct, Operator: corev1.NodeSelectorOpIn, Values: []string{"Tesla-T4"}}, {Key: labelRegion, Operator: corev1.NodeSelectorOpDoesNotExist}},
	}
	for i, term := range terms {
		if !slices.EqualFunc(term.MatchExpressions, want[i], func(a, b corev1.NodeSelectorRequirement) bool {
			return a.Key == b.Key && a.Operator == b.Operator && slices.Equal(a.Values, b.Values)
		}) {
			t.Errorf("term %d = %+v, want %+v", i, term.MatchExpressions, want[i])
		}
	}
}

func TestPodOptions(t *testing.T) {
	t.Parallel()
	cfg := testConfig(newFakeClient(), link.NewHub(nil))
	cfg.UserNamespaces = true
	cfg.RuntimeClassName = "nvidia"
	cfg.ImagePullSecrets = []string{"regcred"}
	cfg.DefaultGPUType = "t4"
	cfg.NodeSelector = map[string]string{"pool": "gpu"}
	cfg.LinkCA = nil
	r := newTestRuntime(t, cfg)
	spec := testSpec("s-2")
	spec.Image = "ghcr.io/org/img:1"
	spec.GPU = runtime.GPURequest{Type: "t4", Region: "elsewhere", Count: 1}
	spec.WorkspaceReadOnly = true
	p := r.pod(spec, "devgpu-ws-x")

	if p.Spec.HostUsers == nil || *p.Spec.HostUsers {
		t.Error("hostUsers is not false with Config.UserNamespaces")
	}
	if p.Spec.RuntimeClassName == nil || *p.Spec.RuntimeClassName != "nvidia" {
		t.Error("runtimeClassName not set")
	}
	if len(p.Spec.ImagePullSecrets) != 1 || p.Spec.ImagePullSecrets[0].Name != "regcred" {
		t.Errorf("imagePullSecrets %v", p.Spec.ImagePullSecrets)
	}
	if p.Spec.NodeSelector["pool"] != "gpu" {
		t.Errorf("nodeSelector %v", p.Spec.NodeSelector)
	}
	c := p.Spec.Containers[0]
	if c.Image != "ghcr.io/org/img:1" {
		t.Errorf("image %q", c.Image)
	}
	if slices.Contains(c.Command, "--link-ca-file") {
		t.Error("--link-ca-file without a CA")
	}
	// The default type: mapped t4 products, or unmapped ones; region
	// "elsewhere" only where labelled so.
	terms := p.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(terms) != 2 || terms[1].MatchExpressions[0].Operator != corev1.NodeSelectorOpNotIn ||
		len(terms[1].MatchExpressions[0].Values) != 3 || terms[0].MatchExpressions[1].Values[0] != "elsewhere" {
		t.Errorf("terms %+v", terms)
	}
	var ws *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].Name == volumeWork {
			ws = &c.VolumeMounts[i]
		}
	}
	if ws == nil || ws.MountPath != "/workspace" || !ws.ReadOnly {
		t.Errorf("workspace mount %+v, want /workspace read-only", ws)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["DEVGPU_WORKSPACE"] != "/workspace" || env["DEVGPU_WORKSPACE_READONLY"] != "1" {
		t.Errorf("workspace env %q %q", env["DEVGPU_WORKSPACE"], env["DEVGPU_WORKSPACE_READONLY"])
	}
}

func TestSecretObject(t *testing.T) {
	t.Parallel()
	r := newTestRuntime(t, testConfig(newFakeClient(), link.NewHub(nil)))
	spec := testSpec("s-3")
	s := r.secret(spec)
	if s.Name != "devgpu-s-3" || s.Labels[labelInstallation] != "inst-a" || s.Labels[labelSession] != "s-3" {
		t.Errorf("secret %s labels %v", s.Name, s.Labels)
	}
	if string(s.Data["agent-secret"]) != spec.AgentSecret || string(s.Data["link-credential"]) != spec.LinkCredential || len(s.Data["link-ca"]) == 0 {
		t.Errorf("secret data keys %v", slices.Sorted(maps.Keys(s.Data)))
	}
	if s.Immutable == nil || !*s.Immutable {
		t.Error("the Secret is mutable")
	}
}

func TestNetworkPolicy(t *testing.T) {
	t.Parallel()
	r := newTestRuntime(t, testConfig(newFakeClient(), link.NewHub(nil)))
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		if host == "pypi.org" {
			return []netip.Addr{netip.MustParseAddr("151.101.0.223"), netip.MustParseAddr("151.101.64.223")}, nil
		}
		return nil, nil
	}
	controlPlane := func(t *testing.T, rule networkingv1.NetworkPolicyEgressRule) {
		t.Helper()
		if len(rule.To) != 1 || rule.To[0].IPBlock == nil || rule.To[0].IPBlock.CIDR != "10.0.0.5/32" {
			t.Errorf("first egress rule goes to %+v, want the control plane 10.0.0.5/32", rule.To)
		}
		if len(rule.Ports) != 1 || rule.Ports[0].Port.IntValue() != 8443 || *rule.Ports[0].Protocol != corev1.ProtocolTCP {
			t.Errorf("first egress rule ports %+v, want tcp 8443", rule.Ports)
		}
	}

	t.Run("none", func(t *testing.T) {
		spec := testSpec("n-1")
		np := r.networkPolicy(spec, nil)
		if np.Spec.PodSelector.MatchLabels[labelSession] != "n-1" || np.Spec.PodSelector.MatchLabels[labelInstallation] != "inst-a" {
			t.Errorf("selects %v", np.Spec.PodSelector.MatchLabels)
		}
		if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || len(np.Spec.Ingress) != 0 {
			t.Error("ingress is not closed")
		}
		if len(np.Spec.Egress) != 1 {
			t.Fatalf("egress %+v, want only the control plane", np.Spec.Egress)
		}
		controlPlane(t, np.Spec.Egress[0])
	})
	t.Run("allow-list", func(t *testing.T) {
		spec := testSpec("n-2")
		spec.Egress = sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"192.168.0.0/16", "pypi.org:443", "[2001:db8::1]:22"}}
		dests, err := resolveEgress(context.Background(), spec.Egress, lookup)
		if err != nil {
			t.Fatal(err)
		}
		np := r.networkPolicy(spec, dests)
		controlPlane(t, np.Spec.Egress[0])
		var got []string
		for _, rule := range np.Spec.Egress[1:] {
			port := 0
			if len(rule.Ports) > 0 {
				port = rule.Ports[0].Port.IntValue()
			}
			got = append(got, rule.To[0].IPBlock.CIDR+" "+strings.Repeat("*", min(1, port))+strconv.Itoa(port))
		}
		want := []string{"192.168.0.0/16 0", "151.101.0.223/32 *443", "151.101.64.223/32 *443", "2001:db8::1/128 *22"}
		if !slices.Equal(got, want) {
			t.Errorf("allow-list rules %q, want %q", got, want)
		}
		if _, err := resolveEgress(context.Background(), sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"nowhere.invalid"}}, lookup); err == nil {
			t.Error("a name without addresses was allowed")
		}
	})
	t.Run("all", func(t *testing.T) {
		spec := testSpec("n-3")
		spec.Egress = sdk.Egress{Mode: sdk.EgressAll}
		np := r.networkPolicy(spec, nil)
		if len(np.Spec.Egress) != 2 || len(np.Spec.Egress[1].To) != 0 || len(np.Spec.Egress[1].Ports) != 0 {
			t.Errorf("egress %+v, want the control plane and everything", np.Spec.Egress)
		}
	})
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	hub := link.NewHub(nil)
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no installation", func(c *Config) { c.Installation = "" }, "installation id is empty"},
		{"no agent image", func(c *Config) { c.AgentImage = "" }, "set kube.agent_image"},
		{"http link", func(c *Config) { c.LinkURL = "http://10.0.0.5:8443" }, "is not an https:// URL"},
		{"named link host", func(c *Config) { c.LinkURL = "https://cp.example.com" }, "list them in kube.control_plane_cidrs"},
		{"bad cidr", func(c *Config) { c.ControlPlaneCIDRs = []string{"10.0.0.0/33"} }, "neither a CIDR nor an IP address"},
		{"no types", func(c *Config) { c.GPUTypes = nil }, "offers no GPU type"},
		{"bad quantity", func(c *Config) { c.Resources = map[string]Resources{"t4": {MemoryLimit: "16 GB"}} }, `memory_limit "16 GB" is not a positive quantity`},
		{"bad namespace", func(c *Config) { c.Namespace = "Dev_GPU" }, "is not a valid namespace name"},
		{"bad workspace size", func(c *Config) { c.StorageClass = "fast"; c.WorkspaceSize = "lots" }, "workspace size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(newFakeClient(), hub)
			tc.change(&cfg)
			_, err := New(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"alice", "alice@example.com", "-x-", strings.Repeat("a", 80), "Ünïcode user", ""} {
		v := labelValue(s)
		if s != "" && len(validation.IsValidLabelValue(v)) > 0 {
			t.Errorf("labelValue(%q) = %q is not a label value", s, v)
		}
	}
	if labelValue("alice@example.com") == labelValue("alice-example.com") {
		t.Error("two users share a label value")
	}
	seen := map[string]string{}
	for _, pair := range [][2]string{{"ml", "alice"}, {"ml-x", "alice"}, {"ml", "x-alice"}, {"a-b", "c"}, {"a", "b-c"}, {"ML", "Bob@example.com"}, {"p", strings.Repeat("u", 90)}} {
		name := workspaceClaimName(pair[0], pair[1])
		if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
			t.Errorf("claim name %q of %v: %v", name, pair, errs)
		}
		if other, ok := seen[name]; ok {
			t.Errorf("pairs %v and %s share claim %q", pair, other, name)
		}
		seen[name] = pair[0] + "/" + pair[1]
	}
	if got := workspaceClaimName("ml", "alice"); got != "devgpu-ws-ml-alice" {
		t.Errorf("claim of ml/alice = %q", got)
	}
}
