//go:build linux

package cli

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/devgpu/devgpu/internal/link"
)

// backendConfig is one entry of the server config's "backends": a runtime
// under a name that sessions record. The first is the default backend.
type backendConfig struct {
	Name    string             `json:"name"`
	Runtime string             `json:"runtime"`
	Kube    *kubeBackendConfig `json:"kube"`
	// Aca is an aca backend's block: Azure Container Apps jobs on GPU
	// workload profiles (server_aca.go).
	Aca *acaBackendConfig `json:"aca"`
}

// kubeBackendConfig is a kube backend's "kube" block: a cluster, where its
// sessions' Pods go, and how Pods reach this server (see kube.Config).
type kubeBackendConfig struct {
	Kubeconfig        string                   `json:"kubeconfig"`
	Context           string                   `json:"context"`
	Namespace         string                   `json:"namespace"`
	Region            string                   `json:"region"`
	GPUTypes          map[string]string        `json:"gpu_types"`
	DefaultGPUType    string                   `json:"default_gpu_type"`
	AgentImage        string                   `json:"agent_image"`
	Image             string                   `json:"image"`
	LinkURL           string                   `json:"link_url"`
	LinkCAFile        string                   `json:"link_ca_file"`
	ControlPlaneCIDRs []string                 `json:"control_plane_cidrs"`
	RuntimeClass      string                   `json:"runtime_class"`
	Tolerations       []kubeToleration         `json:"tolerations"`
	NodeSelector      map[string]string        `json:"node_selector"`
	ImagePullSecrets  []string                 `json:"image_pull_secrets"`
	Resources         map[string]kubeResources `json:"resources"`
	StorageClass      string                   `json:"storage_class"`
	WorkspaceSize     string                   `json:"workspace_size"`
	UserNamespaces    bool                     `json:"user_namespaces"`
}

// kubeToleration is a Pod toleration as Kubernetes spells it.
type kubeToleration struct {
	Key               string `json:"key"`
	Operator          string `json:"operator"`
	Value             string `json:"value"`
	Effect            string `json:"effect"`
	TolerationSeconds *int64 `json:"toleration_seconds"`
}

// kubeResources are a GPU type's CPU and memory requests and limits, as
// Kubernetes quantities.
type kubeResources struct {
	CPURequest    string `json:"cpu_request"`
	CPULimit      string `json:"cpu_limit"`
	MemoryRequest string `json:"memory_request"`
	MemoryLimit   string `json:"memory_limit"`
}

// hostRuntimes lend this host's GPUs; the other runtimes' engines choose
// devices of their own.
var hostRuntimes = []string{"local", "oci", "inproc"}

func isHostRuntime(name string) bool {
	for _, r := range hostRuntimes {
		if r == name {
			return true
		}
	}
	return false
}

// backendNamePattern is what the server accepts as a backend's name.
var backendNamePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// validateBackends checks the config's "backends": valid, unique names;
// known runtimes; at most one runtime that lends this host's GPUs, which
// two would lend twice; a kube block, with link_url and agent_image,
// exactly for kube backends; and an aca block exactly for aca backends.
func validateBackends(bs []backendConfig) error {
	seen := map[string]bool{}
	host := ""
	for i, b := range bs {
		if !backendNamePattern.MatchString(b.Name) {
			return fmt.Errorf("backends[%d].name %q is not a backend name; give 1 to 63 lower-case letters, digits and dashes, such as \"host\" or \"west\"", i, b.Name)
		}
		if seen[b.Name] {
			return fmt.Errorf("backends: the name %q is given twice; give each backend its own name", b.Name)
		}
		seen[b.Name] = true
		switch {
		case isHostRuntime(b.Runtime):
			if host != "" {
				return fmt.Errorf("backends %s and %s both lend this host's GPUs (runtimes local, oci and inproc); keep one of them", host, b.Name)
			}
			host = b.Name
		case b.Runtime == "kube":
			if err := b.Kube.validate(b.Name); err != nil {
				return err
			}
		case b.Runtime == "aca":
			if err := b.Aca.validate(b.Name); err != nil {
				return err
			}
		case b.Runtime == "":
			return fmt.Errorf("backend %s has no runtime; set \"runtime\" to local, oci, inproc, kube or aca", b.Name)
		default:
			return fmt.Errorf("backend %s: runtime %q is not local, oci, inproc, kube or aca; set \"runtime\" to one of them", b.Name, b.Runtime)
		}
		if b.Kube != nil && b.Runtime != "kube" {
			return fmt.Errorf("backend %s: a \"kube\" block belongs only to runtime kube; remove it, or set the runtime to kube", b.Name)
		}
		if b.Aca != nil && b.Runtime != "aca" {
			return fmt.Errorf("backend %s: an \"aca\" block belongs only to runtime aca; remove it, or set the runtime to aca", b.Name)
		}
	}
	return nil
}

// validate checks what the kube runtime cannot do without; kube.New
// checks the rest against the cluster's rules.
func (k *kubeBackendConfig) validate(name string) error {
	if k == nil {
		return fmt.Errorf("backend %s: runtime kube needs a \"kube\" block; give one with at least link_url and agent_image", name)
	}
	if err := checkLinkURL(name, "kube.link_url", k.LinkURL, "the cluster's Pods", "https://10.0.0.5:8443"); err != nil {
		return err
	}
	if k.AgentImage == "" {
		return fmt.Errorf("backend %s: kube.agent_image is missing; give the image with the static agent at /devgpu-agent (make agent-image builds one)", name)
	}
	for i, t := range k.Tolerations {
		switch t.Operator {
		case "", "Equal", "Exists":
		default:
			return fmt.Errorf("backend %s: kube.tolerations[%d].operator %q is not Equal or Exists; use one of them", name, i, t.Operator)
		}
		switch t.Effect {
		case "", "NoSchedule", "PreferNoSchedule", "NoExecute":
		default:
			return fmt.Errorf("backend %s: kube.tolerations[%d].effect %q is not NoSchedule, PreferNoSchedule or NoExecute; use one of them", name, i, t.Effect)
		}
	}
	return nil
}

// checkLinkURL checks a backend's link_url (field), the https:// URL of
// this server, without a path, at which who (its sessions) reach it.
func checkLinkURL(name, field, link, who, example string) error {
	if link == "" {
		return fmt.Errorf("backend %s: %s is missing; give the https:// URL at which %s reach this server, such as %s", name, field, who, example)
	}
	u, err := url.Parse(link)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("backend %s: %s %q is not an https:// URL of this server without a path; give one such as %s", name, field, link, example)
	}
	return nil
}

// readLinkCA reads the PEM of the CA that a backend's agents trust for
// this server's link endpoint: the file of field (kube.link_ca_file,
// aca.link_ca_file), or devCA, the CA of the --dev certificate, when the
// backend names none; nil for neither (the system's roots). It gives the
// CA to hub: the CA that signed this server's certificate signed its
// replicas' too, which they trust when they relay streams to one another.
func readLinkCA(name, field, file, devCA string, hub *link.Hub) ([]byte, error) {
	var ca []byte
	if path := cmp.Or(file, devCA); path != "" {
		var err error
		if ca, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("backend %s: cannot read %s %s (%v); give the PEM file of the CA that signed this server's certificate", name, field, path, err)
		}
	}
	hub.AddCA(ca)
	return ca, nil
}

// resolveBackends is the backends the server runs: those of the config
// file, or one named after --runtime (chosen by resolveRuntime when not
// given). With a config's backends, o.runtime becomes the runtime of the
// host's backend, if there is one, for the local runtime's checks.
func (o *serverOptions) resolveBackends(log *slog.Logger) ([]backendConfig, error) {
	if len(o.backends) == 0 {
		if err := o.resolveRuntime(log); err != nil {
			return nil, err
		}
		return []backendConfig{{Name: o.runtime, Runtime: o.runtime}}, nil
	}
	if o.runtime != "" {
		return nil, errors.New("the server config names backends, so --runtime (or the config's \"runtime\") has no meaning; drop it and give each backend its runtime")
	}
	if err := validateBackends(o.backends); err != nil {
		return nil, fmt.Errorf("server config %s: %w", o.config, err)
	}
	for _, b := range o.backends {
		if isHostRuntime(b.Runtime) {
			o.runtime = b.Runtime
			if err := o.resolveRuntime(log); err != nil {
				return nil, err
			}
		}
	}
	return o.backends, nil
}

// installationIDFile holds, in the data directory, the id that marks what
// this installation owns in shared places (a cluster's Pods).
const installationIDFile = "installation"

var installationIDPattern = regexp.MustCompile(`^[a-z0-9]{8,63}$`)

// installationID reads this installation's id from the data directory,
// creating it the first time: 24 random lower-case hex digits, a valid
// Kubernetes label value.
func installationID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, installationIDFile)
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !installationIDPattern.MatchString(id) {
			return "", fmt.Errorf("the installation id in %s is damaged (%q); restore it from a backup, since sessions in clusters are marked with it (a new one would orphan them)", path, id)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read the installation id: %w", err)
	}
	raw := make([]byte, 12)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("make an installation id: %w", err)
	}
	id := hex.EncodeToString(raw)
	// O_EXCL: of two servers starting at once, one id wins and both read it.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return installationID(dataDir)
	}
	if err != nil {
		return "", fmt.Errorf("write the installation id: %w", err)
	}
	if _, err := f.WriteString(id + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("write the installation id: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write the installation id: %w", err)
	}
	return id, nil
}
