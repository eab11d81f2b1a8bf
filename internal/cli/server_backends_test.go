//go:build linux

package cli

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// exampleBackends is the config of the documentation: this host's oci
// runtime and a cluster.
const exampleBackends = `{
  "listen": "0.0.0.0:8443",
  "backends": [
    {"name": "host", "runtime": "oci"},
    {"name": "west", "runtime": "kube", "kube": {"kubeconfig": "/etc/devgpu/west.kubeconfig", "context": "", "namespace": "devgpu",
       "region": "westus3", "gpu_types": {"Tesla-T4": "t4", "NVIDIA-A100-SXM4-80GB": "a100"}, "default_gpu_type": "",
       "agent_image": "registry.example.com/devgpu/agent:v1", "image": "k8s.local/busybox:1",
       "link_url": "https://10.0.0.5:8443", "link_ca_file": "", "control_plane_cidrs": ["10.0.0.5/32"],
       "runtime_class": "", "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
       "node_selector": {}, "image_pull_secrets": [], "resources": {"t4": {"cpu_request": "2", "cpu_limit": "4", "memory_request": "8Gi", "memory_limit": "16Gi"}},
       "storage_class": "", "workspace_size": "50Gi", "user_namespaces": false}}
  ]
}`

func loadServerConfig(t *testing.T, text string) (serverOptions, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "server.json")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	o := serverOptions{config: path}
	err := o.loadConfig(newServerCmd())
	return o, err
}

func TestBackendsConfig(t *testing.T) {
	t.Parallel()
	o, err := loadServerConfig(t, exampleBackends)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.backends) != 2 || o.backends[0] != (backendConfig{Name: "host", Runtime: "oci"}) || o.backends[1].Name != "west" {
		t.Fatalf("backends = %+v", o.backends)
	}
	k := o.backends[1].Kube
	if k == nil || k.Region != "westus3" || k.GPUTypes["NVIDIA-A100-SXM4-80GB"] != "a100" || k.AgentImage != "registry.example.com/devgpu/agent:v1" ||
		k.Image != "k8s.local/busybox:1" || k.LinkURL != "https://10.0.0.5:8443" || len(k.ControlPlaneCIDRs) != 1 ||
		len(k.Tolerations) != 1 || k.Tolerations[0] != (kubeToleration{Key: "nvidia.com/gpu", Operator: "Exists", Effect: "NoSchedule"}) ||
		k.Resources["t4"] != (kubeResources{CPURequest: "2", CPULimit: "4", MemoryRequest: "8Gi", MemoryLimit: "16Gi"}) || k.WorkspaceSize != "50Gi" {
		t.Fatalf("kube block = %+v", k)
	}
	got, err := o.resolveBackends(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || o.runtime != "oci" {
		t.Fatalf("resolved %+v with the host's runtime %q, want both backends and oci", got, o.runtime)
	}

	// A misspelt field of the kube block is refused, not ignored.
	if _, err := loadServerConfig(t, strings.Replace(exampleBackends, `"agent_image"`, `"agentimage"`, 1)); err == nil || !strings.Contains(err.Error(), "agentimage") {
		t.Fatalf("a misspelt kube field: %v, want an error naming it", err)
	}
}

func TestValidateBackends(t *testing.T) {
	t.Parallel()
	kube := func(edit func(*kubeBackendConfig)) *kubeBackendConfig {
		k := &kubeBackendConfig{LinkURL: "https://10.0.0.5:8443", AgentImage: "agent:v1"}
		if edit != nil {
			edit(k)
		}
		return k
	}
	for _, c := range []struct {
		name     string
		backends []backendConfig
		want     string // in the error; "" for none
	}{
		{"one host runtime", []backendConfig{{Name: "host", Runtime: "local"}}, ""},
		{"host and clusters", []backendConfig{{Name: "host", Runtime: "oci"}, {Name: "west", Runtime: "kube", Kube: kube(nil)}, {Name: "east", Runtime: "kube", Kube: kube(nil)}}, ""},
		{"only a cluster", []backendConfig{{Name: "west", Runtime: "kube", Kube: kube(nil)}}, ""},
		{"bad name", []backendConfig{{Name: "West Coast", Runtime: "oci"}}, `backends[0].name "West Coast"`},
		{"empty name", []backendConfig{{Runtime: "oci"}}, `backends[0].name ""`},
		{"duplicate name", []backendConfig{{Name: "a", Runtime: "oci"}, {Name: "a", Runtime: "kube", Kube: kube(nil)}}, `the name "a" is given twice`},
		{"unknown runtime", []backendConfig{{Name: "a", Runtime: "docker"}}, `runtime "docker" is not local, oci, inproc, kube or aca`},
		{"no runtime", []backendConfig{{Name: "a"}}, `backend a has no runtime`},
		{"two host runtimes", []backendConfig{{Name: "a", Runtime: "oci"}, {Name: "b", Runtime: "local"}}, "backends a and b both lend this host's GPUs"},
		{"kube block on oci", []backendConfig{{Name: "a", Runtime: "oci", Kube: kube(nil)}}, `a "kube" block belongs only to runtime kube`},
		{"kube without block", []backendConfig{{Name: "w", Runtime: "kube"}}, `runtime kube needs a "kube" block`},
		{"kube without link_url", []backendConfig{{Name: "w", Runtime: "kube", Kube: kube(func(k *kubeBackendConfig) { k.LinkURL = "" })}}, "kube.link_url is missing"},
		{"kube with http link_url", []backendConfig{{Name: "w", Runtime: "kube", Kube: kube(func(k *kubeBackendConfig) { k.LinkURL = "http://10.0.0.5:8470" })}}, `kube.link_url "http://10.0.0.5:8470" is not an https:// URL`},
		{"kube link_url with a path", []backendConfig{{Name: "w", Runtime: "kube", Kube: kube(func(k *kubeBackendConfig) { k.LinkURL = "https://cp.example.com/api/v1/agent/link" })}}, "without a path"},
		{"kube without agent_image", []backendConfig{{Name: "w", Runtime: "kube", Kube: kube(func(k *kubeBackendConfig) { k.AgentImage = "" })}}, "kube.agent_image is missing"},
		{"bad toleration", []backendConfig{{Name: "w", Runtime: "kube", Kube: kube(func(k *kubeBackendConfig) { k.Tolerations = []kubeToleration{{Key: "x", Operator: "Exist"}} })}}, `kube.tolerations[0].operator "Exist"`},
		{"bad effect", []backendConfig{{Name: "w", Runtime: "kube", Kube: kube(func(k *kubeBackendConfig) { k.Tolerations = []kubeToleration{{Key: "x", Effect: "NoExec"}} })}}, `kube.tolerations[0].effect "NoExec"`},
	} {
		err := validateBackends(c.backends)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		case err != nil && strings.Count(err.Error(), ";") != 1:
			t.Errorf("%s: %q is not one sentence of cause; fix", c.name, err)
		}
	}
}

func TestResolveBackends(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		name        string
		o           serverOptions
		want        string // backends as name=runtime, comma-separated
		wantRuntime string
		wantErr     string
	}{
		{name: "default", o: serverOptions{}, want: "oci=oci", wantRuntime: "oci"},
		{name: "dev", o: serverOptions{dev: true}, want: "local=local", wantRuntime: "local"},
		{name: "--runtime", o: serverOptions{runtime: "inproc"}, want: "inproc=inproc", wantRuntime: "inproc"},
		{name: "local without --dev", o: serverOptions{runtime: "local"}, wantErr: "--insecure-local-runtime"},
		{name: "backends", o: serverOptions{backends: []backendConfig{{Name: "west", Runtime: "kube", Kube: &kubeBackendConfig{LinkURL: "https://h:1", AgentImage: "a"}}}},
			want: "west=kube", wantRuntime: ""},
		{name: "backends with a local one need --dev", o: serverOptions{backends: []backendConfig{{Name: "h", Runtime: "local"}}}, wantErr: "--insecure-local-runtime"},
		{name: "backends and --runtime", o: serverOptions{runtime: "oci", backends: []backendConfig{{Name: "h", Runtime: "oci"}}}, wantErr: "drop it and give each backend its runtime"},
		{name: "invalid backends", o: serverOptions{config: "s.json", backends: []backendConfig{{Name: "h", Runtime: "kube"}}}, wantErr: `server config s.json: backend h: runtime kube needs a "kube" block`},
	} {
		got, err := c.o.resolveBackends(log)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: %v, want an error with %q", c.name, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		var names []string
		for _, b := range got {
			names = append(names, b.Name+"="+b.Runtime)
		}
		if s := strings.Join(names, ","); s != c.want || c.o.runtime != c.wantRuntime {
			t.Errorf("%s: backends %s with the host's runtime %q, want %s and %q", c.name, s, c.o.runtime, c.want, c.wantRuntime)
		}
	}
}

// The installation id is made once, private, and read back unchanged at
// every start; a damaged one is an error, never silently replaced.
func TestInstallationID(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	id, err := installationID(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !installationIDPattern.MatchString(id) || len(id) != 24 {
		t.Fatalf("installation id %q is not 24 lower-case hex digits", id)
	}
	fi, err := os.Stat(filepath.Join(dir, installationIDFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("installation file: %v, %v; want mode 0600", fi, err)
	}
	again, err := installationID(dir)
	if err != nil || again != id {
		t.Fatalf("second read = %q, %v; want %q", again, err, id)
	}
	if other, _ := installationID(t.TempDir()); other == id {
		t.Fatal("two data directories got the same installation id")
	}
	if err := os.WriteFile(filepath.Join(dir, installationIDFile), []byte("Not/An Id\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := installationID(dir); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("a damaged installation id: %v, want an error", err)
	}
}
