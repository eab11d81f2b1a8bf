//go:build linux

package cli

import (
	"fmt"
	"net/url"
	"slices"
	"time"
)

// acaBackendConfig is an aca backend's "aca" block: Azure Container Apps
// jobs on the GPU workload profiles of a managed environment in the
// customer's subscription, their images in the customer's registry, and
// how their agents reach this server (see aca.Config). It is read here;
// server_aca_azure.go builds the runtime from it, and aca.New judges it.
type acaBackendConfig struct {
	// SubscriptionID (a GUID) and ResourceGroup are where the sessions'
	// jobs are created; Environment is the managed environment, in
	// ResourceGroup, that they run in.
	SubscriptionID string `json:"subscription_id"`
	ResourceGroup  string `json:"resource_group"`
	Environment    string `json:"environment"`
	// Region is the devgpu region of the backend's sessions (default: the
	// environment's location, such as "swedencentral").
	Region string `json:"region"`
	// GPUTypes maps each devgpu GPU type to the name of the environment's
	// workload profile that gives it, such as {"t4": "gpu-t4"} for a
	// profile of type Consumption-GPU-NC8as-T4.
	GPUTypes map[string]string `json:"gpu_types"`
	// Quota is how many GPUs of each type the backend runs at once. A type
	// without an entry takes the environment's GPU quota from Azure, which
	// QuotaFromAzure must then allow.
	Quota          map[string]int `json:"quota"`
	QuotaFromAzure bool           `json:"quota_from_azure"`
	// Registry is the login server of the Azure Container Registry that
	// session images (the image with the agent added) are pushed to and
	// pulled from, such as "contoso.azurecr.io"; Repository is the
	// repository there (default "devgpu/sessions").
	Registry   string `json:"registry"`
	Repository string `json:"repository"`
	// RegistryIdentity is the identity the jobs pull with: the resource id
	// of a user-assigned managed identity with AcrPull on Registry
	// ("system" is refused: each session's job is new, and its
	// system-assigned identity has no AcrPull at its first pull).
	RegistryIdentity string `json:"registry_identity"`
	// AgentBinary is the static agent added to every session image at
	// /devgpu-agent (default: devgpu-agent beside this executable, as for
	// the oci runtime).
	AgentBinary string `json:"agent_binary"`
	// Image is the session image where neither the session nor its
	// project names one.
	Image string `json:"image"`
	// LinkURL is the https:// URL at which the environment's containers
	// reach this server; LinkCAFile is the PEM of the CA they trust for it
	// (default: the CA of the --dev certificate, if the server made one;
	// else the system's roots).
	LinkURL    string `json:"link_url"`
	LinkCAFile string `json:"link_ca_file"`
	// Egress is what the environment's network (VNet with an NSG, a route
	// table or a firewall) enforces on every container in it, since
	// Container Apps has no egress rule per app: "all" (the default),
	// "none", or "allow-list" with EgressAllow (CIDRs and hosts). A
	// session whose project asks for less than that is refused.
	Egress      string   `json:"egress"`
	EgressAllow []string `json:"egress_allow"`
	// Resources are a session container's CPU cores and memory per GPU
	// type, such as {"t4": {"cpu": 8, "memory": "56Gi"}}; a type without
	// an entry gets its workload profile's whole replica.
	Resources map[string]acaResources `json:"resources"`
	// ReplicaTimeout ("24h", the default) bounds how long a session's job
	// execution runs, also when no control plane is left to stop it.
	ReplicaTimeout string `json:"replica_timeout"`
	// Credential is this server's own Azure identity.
	Credential acaCredentialConfig `json:"credential"`
	// Cloud points the backend at another Azure cloud, a private
	// endpoint, or (in tests) a fake.
	Cloud acaCloudConfig `json:"cloud"`
}

// acaResources are a session container's CPU cores and memory ("56Gi").
type acaResources struct {
	CPU    float64 `json:"cpu"`
	Memory string  `json:"memory"`
}

// acaCredentialConfig is the Azure identity the server calls ARM and the
// registry with. Kind is one of:
//   - "default" (or empty): the identity the environment gives this
//     server, tried in this order: a service principal in the
//     environment's AZURE_* variables (azidentity's EnvironmentCredential),
//     workload identity when $AZURE_FEDERATED_TOKEN_FILE is set (TenantID
//     optional), then the managed identity (the user-assigned one of
//     $AZURE_CLIENT_ID if set). Never a person's login: unlike
//     azidentity's DefaultAzureCredential it does not fall back to the
//     Azure CLI, azd or PowerShell;
//   - "managed-identity": the managed identity of the machine or container
//     the server runs on, the user-assigned one with ClientID if given;
//   - "workload-identity": Kubernetes workload identity federation;
//     ClientID and TenantID default to $AZURE_CLIENT_ID and
//     $AZURE_TENANT_ID, the token file to $AZURE_FEDERATED_TOKEN_FILE;
//   - "client-secret": a service principal, TenantID and ClientID, whose
//     secret is read from ClientSecretFile (never from this config).
type acaCredentialConfig struct {
	Kind             string `json:"kind"`
	ClientID         string `json:"client_id"`
	TenantID         string `json:"tenant_id"`
	ClientSecretFile string `json:"client_secret_file"`
}

// acaCloudConfig are the endpoints of the Azure cloud the backend lives
// in; empty fields are Azure public cloud's.
type acaCloudConfig struct {
	// ResourceManager is the ARM endpoint, such as
	// https://management.usgovcloudapi.net; Audience is the audience of
	// its tokens (default: Azure public cloud's,
	// https://management.core.windows.net/).
	ResourceManager string `json:"resource_manager"`
	Audience        string `json:"audience"`
	// AuthorityHost is the Microsoft Entra endpoint, such as
	// https://login.microsoftonline.us/.
	AuthorityHost string `json:"authority_host"`
	// CAFile is a PEM of CAs trusted, in addition to the system's roots,
	// by the calls to ResourceManager's host, Registry's host, the
	// identity endpoint's host ($IDENTITY_ENDPOINT, when set) and a custom
	// AuthorityHost's host (ResourceManager's default, Azure public
	// cloud's, counts as configured; Microsoft Entra's public authorities
	// do not): for private endpoints with an internal CA.
	// Every other host (Microsoft Entra's public authorities, the
	// registries of base images) is trusted by the system's roots alone.
	CAFile string `json:"ca_file"`
}

// validate checks what the CLI itself needs to build the runtime's Config:
// the block, its durations, and which credential to make. Every rule of
// the rest (names, registry, quota, resources, egress, the link URL) is
// aca.New's to judge, which names the field in its error
// ("aca backend NAME: aca.FIELD ..."), as kube's validate leaves its rules
// to kube.New.
func (a *acaBackendConfig) validate(name string) error {
	if a == nil {
		return fmt.Errorf("backend %s: runtime aca needs an \"aca\" block; give one with at least subscription_id, resource_group, environment, gpu_types, quota, registry, registry_identity, image and link_url", name)
	}
	if _, err := a.replicaTimeout(); err != nil {
		return fmt.Errorf("backend %s: %w", name, err)
	}
	if err := a.Credential.validate(); err != nil {
		return fmt.Errorf("backend %s: %w", name, err)
	}
	return a.Cloud.validate(name)
}

// replicaTimeout is ReplicaTimeout parsed; 0 when not given (the runtime's
// default). aca.New judges its range.
func (a *acaBackendConfig) replicaTimeout() (time.Duration, error) {
	if a.ReplicaTimeout == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(a.ReplicaTimeout)
	if err != nil {
		return 0, fmt.Errorf("aca.replica_timeout %q is not a duration; give one such as \"24h\"", a.ReplicaTimeout)
	}
	return d, nil
}

// validate checks that the credential's kind is known and that it is given
// exactly the fields that kind takes.
func (c acaCredentialConfig) validate() error {
	var takes []string
	switch c.Kind {
	case "", "default":
		takes = []string{"tenant_id"}
	case "managed-identity":
		takes = []string{"client_id"}
	case "workload-identity":
		takes = []string{"client_id", "tenant_id"}
	case "client-secret":
		for _, f := range c.fields() {
			if f.value == "" {
				return fmt.Errorf("aca.credential.%s is missing; a client-secret credential needs tenant_id, client_id and client_secret_file (a file holding the secret)", f.field)
			}
		}
		return nil
	default:
		return fmt.Errorf("aca.credential.kind %q is not default, managed-identity, workload-identity or client-secret; choose the identity this server runs with", c.Kind)
	}
	kind := c.Kind
	if kind == "" {
		kind = "default"
	}
	for _, f := range c.fields() {
		if f.value != "" && !slices.Contains(takes, f.field) {
			return fmt.Errorf("aca.credential.%s has no meaning for a %s credential; remove it, or choose the kind that takes it", f.field, kind)
		}
	}
	return nil
}

// fields are the credential's fields besides its kind, in a fixed order.
func (c acaCredentialConfig) fields() []struct{ field, value string } {
	return []struct{ field, value string }{{"tenant_id", c.TenantID}, {"client_id", c.ClientID}, {"client_secret_file", c.ClientSecretFile}}
}

// validate checks that the cloud's endpoints are https:// URLs.
func (c acaCloudConfig) validate(name string) error {
	for _, f := range []struct{ field, value string }{{"resource_manager", c.ResourceManager}, {"authority_host", c.AuthorityHost}} {
		if f.value == "" {
			continue
		}
		if u, err := url.Parse(f.value); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("backend %s: aca.cloud.%s %q is not an https:// URL; give the endpoint's URL, such as https://management.azure.com or https://login.microsoftonline.com/", name, f.field, f.value)
		}
	}
	if c.Audience != "" && c.ResourceManager == "" {
		return fmt.Errorf("backend %s: aca.cloud.audience is given without aca.cloud.resource_manager; give the ARM endpoint whose tokens it names, or remove it", name)
	}
	return nil
}
