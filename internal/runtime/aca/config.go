//go:build linux && !agentonly

package aca

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"

	"github.com/devgpu/devgpu/internal/link"
)

// Config is one Azure Container Apps backend: a managed environment with
// GPU workload profiles in the customer's subscription, the registry its
// session images go to, and how its agents reach this control plane.
type Config struct {
	// Backend is the backend's name (tag devgpu-backend, logs).
	Backend string
	// Installation is this installation's id (tag devgpu-installation);
	// List, Stop and reconcile touch only jobs that carry it and Backend.
	Installation string

	// SubscriptionID and ResourceGroup are where the session jobs are
	// created; Environment is the name of the managed environment (in
	// ResourceGroup) they run in.
	SubscriptionID string
	ResourceGroup  string
	Environment    string
	// Region is the devgpu region of this backend's sessions; "" is the
	// environment's location as ARM reports it (such as "swedencentral").
	Region string
	// GPUTypes maps a devgpu GPU type to the name of the environment's
	// workload profile that gives it, such as "t4": "gpu-t4" for a profile
	// of type Consumption-GPU-NC8as-T4. Every profile named must exist in
	// the environment with a GPU profile type.
	GPUTypes map[string]string
	// Quota is how many GPUs of each type the backend runs at once: its
	// Capacity. A type without an entry takes its limit from the
	// environment's quota usages when QuotaFromAzure is set.
	Quota map[string]int
	// QuotaFromAzure reads the environment's GPU quota (the usages API)
	// for the types Quota leaves out, at New and on each Capacity refresh.
	QuotaFromAzure bool

	// Registry is the login server of the customer's Azure Container
	// Registry, such as "contoso.azurecr.io": session images (the image
	// with the agent layer added) are pushed there and pulled from there.
	Registry string
	// Repository is the repository in Registry that holds session images
	// (default "devgpu/sessions").
	Repository string
	// RegistryIdentity is the identity the jobs pull with: the resource id
	// of a user-assigned managed identity with AcrPull. "system" is
	// refused: each session's job is new, and its system-assigned
	// identity holds no AcrPull at its first pull.
	RegistryIdentity string
	// AgentBinary is the static agent (devgpu built with -tags agentonly,
	// CGO_ENABLED=0) that is added to every session image at
	// /devgpu-agent.
	AgentBinary string
	// DefaultImage is the session image when Spec.Image is "".
	DefaultImage string

	// LinkURL is the https:// URL at which the environment's containers
	// reach the control plane's link endpoint; LinkCA is the PEM they
	// trust for it (nil: the system's roots). Link receives the agents.
	LinkURL string
	LinkCA  []byte
	Link    *link.Hub

	// Egress is what the environment's network enforces on every app in
	// it (Container Apps has no per-app egress rule): "all" (the default),
	// "none", or "allow-list" with EgressAllow. A session whose policy the
	// environment cannot honour is refused at Start.
	Egress      string
	EgressAllow []string

	// CPU (cores) and Memory ("56Gi") of a session's container, per GPU
	// type; a type without an entry gets its workload profile's whole
	// replica.
	Resources map[string]Resources
	// ReplicaTimeout bounds how long a session's job execution may run,
	// also when the control plane is gone (default 24h).
	ReplicaTimeout time.Duration

	// Credential is the control plane's own Azure identity (managed
	// identity, workload identity or a service principal), never a
	// user's.
	Credential azcore.TokenCredential
	// ClientOptions configures the ARM clients (cloud, transport, retry);
	// tests point them at acafake.
	ClientOptions *arm.ClientOptions
	// RegistryTransport carries the registry's requests; nil is
	// http.DefaultTransport.
	RegistryTransport http.RoundTripper
	// Logger is where the runtime logs; nil is slog.Default().
	Logger *slog.Logger
}

// Resources are a session container's CPU cores and memory.
type Resources struct {
	CPU    float64
	Memory string
}
