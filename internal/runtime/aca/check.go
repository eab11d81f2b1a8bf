//go:build linux && !agentonly

package aca

import (
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/sdk"
)

// Defaults of Config's fields.
const (
	DefaultRepository     = "devgpu/sessions"
	DefaultReplicaTimeout = 24 * time.Hour
)

// checked is a Config validated, with its defaults filled in, and what
// New learnt from the environment.
type checked struct {
	Config
	// region is Region, or the environment's location.
	region string
	// location is the environment's location as ARM names it
	// ("swedencentral"), where the subscription's usages are read.
	location string
	// environmentID is the environment's ARM resource id.
	environmentID string
	// profileTypes maps each of GPUTypes' profiles to its workload profile
	// type, as the environment reports it.
	profileTypes map[string]string
}

// repositoryName is a registry repository path: lower-case components of
// letters, digits and separators, joined by '/' (the OCI distribution
// spec's name grammar).
var repositoryName = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)

// check validates cfg and fills in its defaults. Each error names the
// field and the fix.
func check(cfg Config) (*checked, error) {
	c := &checked{Config: cfg}
	if c.Repository == "" {
		c.Repository = DefaultRepository
	}
	if c.ReplicaTimeout == 0 {
		c.ReplicaTimeout = DefaultReplicaTimeout
	}
	if c.Egress == "" {
		c.Egress = sdk.EgressAll
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Backend == "" {
		return nil, fmt.Errorf("aca: the backend has no name; give it one in the server config's backends")
	}
	b := "aca backend " + c.Backend
	if c.Installation == "" {
		return nil, fmt.Errorf("%s: the installation id is empty; the server sets it from its store, so this is a bug in the caller", b)
	}
	for _, f := range []struct{ value, field, example string }{
		{c.SubscriptionID, "aca.subscription_id", "the subscription's id"},
		{c.ResourceGroup, "aca.resource_group", "the resource group the session jobs are created in"},
		{c.Environment, "aca.environment", "the name of the managed environment with the GPU workload profiles"},
		{c.Registry, "aca.registry", "the login server of the Azure Container Registry, such as contoso.azurecr.io"},
		{c.RegistryIdentity, "aca.registry_identity", "the resource id of a user-assigned managed identity with AcrPull on the registry"},
		{c.AgentBinary, "aca.agent_binary", "the static devgpu agent (built with -tags agentonly, CGO_ENABLED=0)"},
		{c.DefaultImage, "aca.image", "the default session image"},
	} {
		if f.value == "" {
			return nil, fmt.Errorf("%s: %s is not set; set it to %s", b, f.field, f.example)
		}
	}
	if strings.ContainsAny(c.Registry, "/ ") || strings.Contains(c.Registry, "://") {
		return nil, fmt.Errorf("%s: aca.registry %q is not a registry login server; give the host name alone, such as contoso.azurecr.io", b, c.Registry)
	}
	if !repositoryName.MatchString(c.Repository) {
		return nil, fmt.Errorf("%s: aca.repository %q is not a repository name; use lower-case letters, digits, '.', '_', '-' and '/', such as %s", b, c.Repository, DefaultRepository)
	}
	if c.RegistryIdentity == "system" {
		// Each session is a new job, whose new system-assigned identity
		// holds no AcrPull on the registry when it first pulls
		// (https://learn.microsoft.com/azure/container-apps/managed-identity-image-pull
		// recommends a user-assigned identity for this reason).
		return nil, fmt.Errorf("%s: aca.registry_identity \"system\" cannot pull: every session is a new job whose system-assigned identity has no AcrPull on the registry at its first pull; give the resource id of a user-assigned identity with AcrPull on %s (https://learn.microsoft.com/azure/container-apps/managed-identity-image-pull)", b, c.Registry)
	}
	if !strings.HasPrefix(strings.ToLower(c.RegistryIdentity), "/subscriptions/") {
		return nil, fmt.Errorf("%s: aca.registry_identity %q is not a user-assigned identity's resource id; give one like /subscriptions/.../providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME with AcrPull on the registry", b, c.RegistryIdentity)
	}
	if c.Credential == nil {
		return nil, fmt.Errorf("%s: no Azure credential; set aca.credential (managed identity, workload identity or a service principal)", b)
	}
	if c.Link == nil {
		return nil, fmt.Errorf("%s: no link hub to receive its agents; this is a bug in the caller", b)
	}
	u, err := url.Parse(c.LinkURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "wss") {
		return nil, fmt.Errorf("%s: aca.link_url %q is not an https:// URL; set it to the control plane's address as the environment's containers reach it, such as https://devgpu.contoso.com:8443", b, c.LinkURL)
	}
	if c.ReplicaTimeout < time.Minute || c.ReplicaTimeout.Seconds() > math.MaxInt32 {
		return nil, fmt.Errorf("%s: aca.replica_timeout %s is out of range; give a duration of at least a minute, such as 24h", b, c.ReplicaTimeout)
	}
	if c.ReplicaTimeout%time.Second != 0 {
		// The job's replicaTimeout is a whole number of seconds.
		return nil, fmt.Errorf("%s: aca.replica_timeout %s is not a whole number of seconds, which is all Azure takes; give one such as 24h or 90s", b, c.ReplicaTimeout)
	}
	if len(c.GPUTypes) == 0 {
		return nil, fmt.Errorf("%s offers no GPU type; map devgpu GPU types to the environment's workload profiles in aca.gpu_types, such as \"t4\": \"gpu-t4\"", b)
	}
	for _, typ := range slices.Sorted(maps.Keys(c.GPUTypes)) {
		if typ == "" || c.GPUTypes[typ] == "" {
			return nil, fmt.Errorf("%s: aca.gpu_types maps %q to workload profile %q; name both the GPU type and the profile", b, typ, c.GPUTypes[typ])
		}
		if n, ok := c.Quota[typ]; ok && n < 0 {
			return nil, fmt.Errorf("%s: aca.quota of GPU type %s is %d; give the number of GPUs it may run at once", b, typ, n)
		}
		if _, ok := c.Quota[typ]; !ok && !c.QuotaFromAzure {
			return nil, fmt.Errorf("%s: GPU type %s has no quota; set aca.quota.%s to the GPUs the backend may run at once, or set aca.quota_from_azure", b, typ, typ)
		}
	}
	for typ := range c.Quota {
		if _, ok := c.GPUTypes[typ]; !ok {
			return nil, fmt.Errorf("%s: aca.quota names GPU type %s, which aca.gpu_types does not map; map it to a workload profile or remove it", b, typ)
		}
	}
	for typ, r := range c.Resources {
		if r.CPU <= 0 || !memoryQuantity.MatchString(r.Memory) {
			return nil, fmt.Errorf("%s: aca.resources of GPU type %s are cpu %v, memory %q; give positive cores and memory like \"56Gi\"", b, typ, r.CPU, r.Memory)
		}
	}
	switch c.Egress {
	case sdk.EgressAll, sdk.EgressNone:
		if len(c.EgressAllow) > 0 {
			return nil, fmt.Errorf("%s: aca.egress_allow is set but aca.egress is %q; set aca.egress to \"allow-list\" or remove aca.egress_allow", b, c.Egress)
		}
	case sdk.EgressAllowList:
		if len(c.EgressAllow) == 0 {
			return nil, fmt.Errorf("%s: aca.egress is \"allow-list\" with no aca.egress_allow; list the destinations the environment's network lets through", b)
		}
		for _, d := range c.EgressAllow {
			if _, err := parseDestination(d); err != nil {
				return nil, fmt.Errorf("%s: aca.egress_allow: %w", b, err)
			}
		}
	default:
		return nil, fmt.Errorf("%s: aca.egress %q is not one of \"all\", \"none\" or \"allow-list\"; say what the environment's network enforces", b, c.Egress)
	}
	return c, nil
}

// memoryQuantity is a container's memory as Container Apps writes it:
// "0.5Gi", "56Gi", "250Mi".
var memoryQuantity = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?(Gi|Mi)$`)

// Profile types whose replicas have a GPU, and what a whole replica of
// each holds. Container Apps gives every replica of a serverless GPU
// profile one GPU (https://learn.microsoft.com/azure/container-apps/gpu-serverless-overview:
// "each replica gets one GPU"); the vCPU and memory figures are the ones
// the workload profiles overview lists for these types
// (https://learn.microsoft.com/azure/container-apps/workload-profiles-overview).
// These figures were not confirmed against a stored copy of that page;
// aca.resources overrides them per GPU type.
var gpuProfiles = map[string]Resources{
	"Consumption-GPU-NC8as-T4":  {CPU: 8, Memory: "56Gi"},
	"Consumption-GPU-NC24-A100": {CPU: 24, Memory: "220Gi"},
}

// consumption is the workload profile of sessions without a GPU, present
// in every workload profiles environment, and a replica's most there (4
// vCPU, 8 GiB: workload-profiles-overview's Consumption row).
const consumption = "Consumption"

var consumptionResources = Resources{CPU: 4, Memory: "8Gi"}

// gpuProfileType reports whether a workload profile type gives its
// replicas a GPU.
func gpuProfileType(t string) bool {
	_, known := gpuProfiles[t]
	return known || strings.HasPrefix(t, "Consumption-GPU-")
}

// resources are the container's CPU and memory for a session of GPU type
// typ (count 0: no GPU).
func (c *checked) resources(typ string, count int) Resources {
	if count == 0 {
		return consumptionResources
	}
	if r, ok := c.Resources[typ]; ok {
		return r
	}
	return gpuProfiles[c.profileTypes[c.GPUTypes[typ]]]
}

// profile is the workload profile a session of GPU type typ runs on.
func (c *checked) profile(typ string, count int) string {
	if count == 0 {
		return consumption
	}
	return c.GPUTypes[typ]
}

// checkRequest refuses a GPU request the backend can never place.
func (c *checked) checkRequest(req runtime.GPURequest) error {
	b := "aca backend " + c.Backend
	switch {
	case req.Count > 1:
		return fmt.Errorf("%s cannot give a session %d GPUs: Container Apps gives each replica one GPU; ask for 1", b, req.Count)
	case req.Count < 0:
		return fmt.Errorf("%s cannot give a session %d GPUs; ask for 1", b, req.Count)
	case req.Count == 1 && c.GPUTypes[req.Type] == "":
		return fmt.Errorf("%s offers no GPU of type %q; ask for one it maps in aca.gpu_types (%s)", b, req.Type, strings.Join(slices.Sorted(maps.Keys(c.GPUTypes)), ", "))
	case req.Region != "" && req.Region != c.region:
		return fmt.Errorf("%s runs sessions in region %s only, not %s; ask for %s or use another backend", b, c.region, req.Region, c.region)
	}
	return nil
}

// sortedKeys are m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
