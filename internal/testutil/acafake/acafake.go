// Package acafake is a contract fake of the parts of Azure that the aca
// runtime calls, for tests on a machine that cannot reach Azure:
//
//   - Azure Resource Manager's Microsoft.App endpoints for managed
//     environments (get, quota usages) and Container Apps jobs (create or
//     update, get, list, delete, start, executions, stop an execution),
//     with ARM's long-running operations (Azure-AsyncOperation and
//     Location polling), 202/204 deletes, {"error":{"code","message"}}
//     bodies, 429 with Retry-After, 409 conflicts and quota errors;
//   - the App Service managed identity endpoint (IDENTITY_ENDPOINT and
//     IDENTITY_HEADER), which is what azidentity's ManagedIdentityCredential
//     uses inside Container Apps;
//   - an Azure Container Registry: the OCI distribution API with ACR's
//     token exchange (/oauth2/exchange, /oauth2/token).
//
// Every behaviour is pinned by a comment citing the Azure REST
// specification or document it comes from, and contract_test.go drives
// the real armappcontainers client and azidentity against it.
//
// When a job execution starts, the fake runs the container as the
// platform would, but as a local process: it pulls the job's image from
// its registry, takes the file the container's command names out of the
// image's layers, writes the secrets of secret volumes to files under a
// directory of its own (rewriting the mount path in the command's
// arguments to it), and runs the command with the container's env. A GPU
// workload profile gives the replica one simulated GPU
// (NVIDIA_VISIBLE_DEVICES=GPU-sim-<type>-<n>), as the platform gives
// each replica one GPU. The process's exit ends the execution: Succeeded
// with status 0, Failed otherwise; jobs are never restarted
// (replicaRetryLimit 0 is what the runtime sets).
package acafake

import (
	"errors"
	"log/slog"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Options describe the one subscription, resource group and managed
// environment the fake serves.
type Options struct {
	SubscriptionID string
	ResourceGroup  string
	Environment    string
	// Location is the environment's location (default "swedencentral").
	Location string
	// Profiles are the environment's workload profiles: name -> type, such
	// as "gpu-t4": "Consumption-GPU-NC8as-T4". The Consumption profile is
	// always there.
	Profiles map[string]string
	// GPUQuota is the environment's quota of GPUs per workload profile
	// type (such as "Consumption-GPU-NC8as-T4": 2); starting an execution
	// beyond it fails with Azure's quota error, and the usages API reports
	// it.
	GPUQuota map[string]int
	// Dir is where the fake keeps agents it extracted and secret files
	// (a test's t.TempDir()).
	Dir string
	// Logger hears what the fake does; nil discards.
	Logger *slog.Logger
}

// Fault is a failure the fake gives the next request that matches, once.
type Fault struct {
	// Method and PathSuffix select the request ("PUT", "/jobs/x").
	Method     string
	PathSuffix string
	// Status and Code are the HTTP status and ARM error code to answer
	// with (429 adds Retry-After: RetryAfter seconds).
	Status     int
	Code       string
	Message    string
	RetryAfter int
}

// Fake is a running fake. Its servers use TLS with a CA of its own
// (CAPEM).
type Fake struct{}

// New starts the fake's servers.
func New(opts Options) (*Fake, error) { return nil, errors.New("acafake: not built yet") }

// Close stops the servers and every process the fake started, and waits
// for them.
func (f *Fake) Close() {}

// ARMEndpoint is the https:// URL to use as the ARM endpoint (the
// cloud.ResourceManager service's Endpoint).
func (f *Fake) ARMEndpoint() string { return "" }

// CAPEM is the PEM of the CA that signed the fake's certificates.
func (f *Fake) CAPEM() []byte { return nil }

// HTTPClient trusts the fake's CA.
func (f *Fake) HTTPClient() *http.Client { return nil }

// IdentityEndpoint returns the values of IDENTITY_ENDPOINT and
// IDENTITY_HEADER under which azidentity's ManagedIdentityCredential gets
// tokens from the fake.
func (f *Fake) IdentityEndpoint() (endpoint, header string) { return "", "" }

// Registry is the fake registry's login server (host:port), served over
// TLS with the fake's CA.
func (f *Fake) Registry() string { return "" }

// Push stores img in the fake registry as ref (host:port/repo:tag), with
// no authentication: for seeding base images in tests.
func (f *Fake) Push(ref string, img v1.Image) error { return errors.New("acafake: not built yet") }

// Inject makes the next request that matches fail as fault says.
func (f *Fake) Inject(fault Fault) {}

// Requests counts the requests the fake answered, by "METHOD suffix"
// where suffix is the path after the resource group (such as
// "PUT /providers/Microsoft.App/jobs/x"): tests check what was called.
func (f *Fake) Requests() map[string]int { return nil }

// Running lists the jobs that have an execution running now.
func (f *Fake) Running() []string { return nil }

// Crash kills the running execution's process of job, as a replica lost
// with its node: the execution ends Failed.
func (f *Fake) Crash(job string) error { return errors.New("acafake: not built yet") }

// Env returns the environment the execution of job was started with, for
// tests of what the runtime passes.
func (f *Fake) Env(job string) map[string]string { return nil }
