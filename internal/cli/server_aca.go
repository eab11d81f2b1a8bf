//go:build linux

package cli

import (
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// acaBackendConfig is an aca backend's "aca" block: Azure Container Apps
// jobs on the GPU workload profiles of a managed environment in the
// customer's subscription, their images in the customer's registry, and
// how their agents reach this server (see aca.Config). It is read here and
// checked by validate; server_aca_azure.go builds the runtime from it.
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
	// RegistryIdentity is the identity the jobs pull with: "system", or
	// the resource id of a user-assigned managed identity with AcrPull on
	// Registry.
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
//   - "default" (or empty): azidentity's DefaultAzureCredential, which
//     tries the environment's variables, workload identity, managed
//     identity and the Azure CLI, in that order; TenantID is optional;
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
	// by the calls to ARM, the identity endpoint and the registry: for
	// private endpoints with an internal CA.
	CAFile string `json:"ca_file"`
}

// The patterns of Azure names that the aca block takes.
var (
	// A subscription id is a GUID.
	acaSubscriptionPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	// A registry's login server is a host name with an optional port.
	acaRegistryPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$`)
	// A repository is lower-case path components (the OCI distribution
	// spec's grammar).
	acaRepositoryPattern = regexp.MustCompile(`^[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*$`)
	// Container Apps memory is a number of gibibytes, such as "0.5Gi".
	acaMemoryPattern = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?Gi$`)
)

// validate checks what the aca block must say before anything reaches
// Azure; aca.New checks the rest against the environment itself.
func (a *acaBackendConfig) validate(name string) error {
	if a == nil {
		return fmt.Errorf("backend %s: runtime aca needs an \"aca\" block; give one with at least subscription_id, resource_group, environment, gpu_types, quota, registry, registry_identity and link_url", name)
	}
	if a.SubscriptionID == "" {
		return fmt.Errorf("backend %s: aca.subscription_id is missing; give the id (a GUID) of the subscription the sessions run in", name)
	}
	if !acaSubscriptionPattern.MatchString(a.SubscriptionID) {
		return fmt.Errorf("backend %s: aca.subscription_id %q is not a subscription id; give the GUID that `az account show --query id` prints", name, a.SubscriptionID)
	}
	if a.ResourceGroup == "" {
		return fmt.Errorf("backend %s: aca.resource_group is missing; give the resource group that holds the managed environment and the sessions' jobs", name)
	}
	if a.Environment == "" {
		return fmt.Errorf("backend %s: aca.environment is missing; give the name of the Container Apps managed environment that has the GPU workload profiles", name)
	}
	if len(a.GPUTypes) == 0 {
		return fmt.Errorf("backend %s: aca.gpu_types is empty; map each GPU type to the environment's workload profile that gives it, such as {\"t4\": \"gpu-t4\"}", name)
	}
	for _, typ := range slices.Sorted(maps.Keys(a.GPUTypes)) {
		if typ == "" || a.GPUTypes[typ] == "" {
			return fmt.Errorf("backend %s: aca.gpu_types maps %q to %q; give a GPU type and the name of a workload profile, such as \"t4\": \"gpu-t4\"", name, typ, a.GPUTypes[typ])
		}
	}
	for _, typ := range slices.Sorted(maps.Keys(a.Quota)) {
		if _, ok := a.GPUTypes[typ]; !ok {
			return fmt.Errorf("backend %s: aca.quota names GPU type %s, which aca.gpu_types does not map to a workload profile; add it there or remove it here", name, typ)
		}
		if a.Quota[typ] < 0 {
			return fmt.Errorf("backend %s: aca.quota of %s is %d; give how many of its GPUs the backend may run at once, 0 or more", name, typ, a.Quota[typ])
		}
	}
	if !a.QuotaFromAzure {
		for _, typ := range slices.Sorted(maps.Keys(a.GPUTypes)) {
			if _, ok := a.Quota[typ]; !ok {
				return fmt.Errorf("backend %s: aca.quota has no entry for GPU type %s; give how many of its GPUs the backend may run at once, or set aca.quota_from_azure to take the environment's quota", name, typ)
			}
		}
	}
	if a.Registry == "" {
		return fmt.Errorf("backend %s: aca.registry is missing; give the login server of the Azure Container Registry for session images, such as contoso.azurecr.io", name)
	}
	if !acaRegistryPattern.MatchString(a.Registry) {
		return fmt.Errorf("backend %s: aca.registry %q is not a registry's login server; give its host name without a scheme or path, such as contoso.azurecr.io", name, a.Registry)
	}
	if a.Repository != "" && !acaRepositoryPattern.MatchString(a.Repository) {
		return fmt.Errorf("backend %s: aca.repository %q is not a repository name; give lower-case letters, digits and separators, such as devgpu/sessions", name, a.Repository)
	}
	if id := a.RegistryIdentity; id != "system" && !isUserAssignedIdentity(id) {
		return fmt.Errorf("backend %s: aca.registry_identity %q is neither \"system\" nor a user-assigned identity's resource id; give the resource id (/subscriptions/.../providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME) of an identity with AcrPull on the registry", name, id)
	}
	if err := checkLinkURL(name, "aca.link_url", a.LinkURL, "the environment's containers", "https://devgpu.example.com:8443"); err != nil {
		return err
	}
	switch a.Egress {
	case "", "all", "none":
		if len(a.EgressAllow) > 0 {
			return fmt.Errorf("backend %s: aca.egress_allow is given but aca.egress is %q; set aca.egress to \"allow-list\", or remove aca.egress_allow", name, a.Egress)
		}
	case "allow-list":
		if len(a.EgressAllow) == 0 {
			return fmt.Errorf("backend %s: aca.egress is \"allow-list\" with an empty aca.egress_allow; list the CIDRs and hosts the environment's network lets containers reach", name)
		}
	default:
		return fmt.Errorf("backend %s: aca.egress %q is not all, none or allow-list; give what the environment's network enforces", name, a.Egress)
	}
	for _, typ := range slices.Sorted(maps.Keys(a.Resources)) {
		r := a.Resources[typ]
		if _, ok := a.GPUTypes[typ]; !ok {
			return fmt.Errorf("backend %s: aca.resources names GPU type %s, which aca.gpu_types does not map to a workload profile; add it there or remove it here", name, typ)
		}
		if r.CPU <= 0 {
			return fmt.Errorf("backend %s: aca.resources.%s.cpu is %g; give the container's CPU cores, more than 0, such as 8", name, typ, r.CPU)
		}
		if !acaMemoryPattern.MatchString(r.Memory) {
			return fmt.Errorf("backend %s: aca.resources.%s.memory %q is not a size in Gi; give one such as \"56Gi\"", name, typ, r.Memory)
		}
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
// default). Container Apps counts it in whole seconds.
func (a *acaBackendConfig) replicaTimeout() (time.Duration, error) {
	if a.ReplicaTimeout == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(a.ReplicaTimeout)
	if err != nil || d < time.Second || d%time.Second != 0 {
		return 0, fmt.Errorf("aca.replica_timeout %q is not a whole number of seconds of 1s or more; give a duration such as \"24h\"", a.ReplicaTimeout)
	}
	return d, nil
}

// isUserAssignedIdentity reports whether id is the resource id of a
// user-assigned managed identity.
func isUserAssignedIdentity(id string) bool {
	parts := strings.Split(strings.ToLower(id), "/")
	// "", subscriptions, SUB, resourcegroups, RG, providers,
	// microsoft.managedidentity, userassignedidentities, NAME
	return len(parts) == 9 && parts[0] == "" && parts[1] == "subscriptions" && parts[2] != "" && parts[3] == "resourcegroups" && parts[4] != "" &&
		parts[5] == "providers" && parts[6] == "microsoft.managedidentity" && parts[7] == "userassignedidentities" && parts[8] != ""
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
