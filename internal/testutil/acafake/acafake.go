//go:build linux && !agentonly

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
//
// # Using the fake from a test
//
//	f, err := acafake.New(acafake.Options{
//		SubscriptionID: "sub", ResourceGroup: "rg", Environment: "env",
//		Profiles: map[string]string{"gpu-t4": "Consumption-GPU-NC8as-T4"},
//		GPUQuota: map[string]int{"Consumption-GPU-NC8as-T4": 1},
//		Dir:      t.TempDir(),
//	})
//	defer f.Close()
//	endpoint, header := f.IdentityEndpoint()
//	t.Setenv("IDENTITY_ENDPOINT", endpoint)
//	t.Setenv("IDENTITY_HEADER", header)
//	cred, _ := azidentity.NewManagedIdentityCredential(nil)
//	opts := &arm.ClientOptions{ClientOptions: f.ClientOptions()}
//	jobs, _ := armappcontainers.NewJobsClient("sub", cred, opts)
//
// Instead of the environment variables, f.Credential() (an addition to
// the contract) is a credential that asks the identity endpoint
// directly, for tests that run in parallel.
//
// ClientOptions (an addition to the contract) is the
// policy.ClientOptions whose cloud sends ARM requests to ARMEndpoint with
// the audience https://management.core.windows.net/ and whose transport
// trusts CAPEM, with retries shortened for tests (azcore's retry policy
// still honours Retry-After). The identity endpoint is plain http on
// loopback: msal-go's App Service source takes IDENTITY_ENDPOINT as given
// (apps/managedidentity createAppServiceAuthRequest, msal-go v1.10.1).
//
// The fake sends no Retry-After on its long-running operations' responses,
// so PollUntilDone waits PollUntilDoneOptions.Frequency between polls (30s
// by default; under go test a shorter one is allowed, such as 10ms). An
// operation is InProgress when it starts and at its first poll, and
// reaches its end at the second. A GET or list of a job counts as a poll
// of its create or delete (clients may follow a job's provisioningState
// instead of the operation), so a job whose creator never polled still
// reaches Succeeded once it is read.
//
// The registry (Registry) answers with ACR's bearer challenge; a client
// gets in with authn.AuthConfig{IdentityToken: refresh} where refresh
// comes from POST https://<Registry>/oauth2/exchange with an access token
// the identity endpoint issued. Push seeds images without that.
//
// Requests keys: for paths under the resource group, "METHOD " and the
// path after /resourceGroups/<rg> (such as "PUT
// /providers/Microsoft.App/jobs/x"); for long-running operation polls,
// "GET " and the path after /subscriptions/<sub>; for the registry,
// "METHOD registry " and the path (such as "PUT registry
// /v2/devgpu/sessions/manifests/t1"); for the identity endpoint, "GET
// identity".
//
// Executions are named <job>-<7 random lower-case letters and digits>
// (as the REST spec's example Job_Start.json names one,
// "testcontainerappsjob0-pjxhsye"); they are Processing from the start
// call on while the image is pulled, and Running once their process has
// started. A stop, delete, Crash, replicaTimeout or Close ends the
// process and every process it started (found through /proc, whatever
// session or group they are in), as everything in a replica's container
// ends with it; so does the process's own exit. Additions to the
// contract, beside ClientOptions: Credential, Execution (the state of a
// job's latest execution: status, the reason it failed before its
// process ran, its process's pid), Output (what that process wrote to
// stdout and stderr), Options.SystemIdentityHasAcrPull and
// Fault.FailOperation.
//
// The fake checks a job's PUT as Container Apps does where it knows how
// (name rules, environmentId, workload profile, Manual trigger,
// replicaTimeout, secrets that volumes and env reference, a registry
// pulled with an identity the job has) and answers 400 InvalidParameter
// with a sentence (a bad job name is 400 ContainerAppInvalidName). A job
// whose registry is pulled with "system", its system-assigned identity,
// fails its first pull, as in Azure (that identity is new with the job
// and has no AcrPull yet), unless Options.SystemIdentityHasAcrPull.
// Secret volume files are mode 0400 under
// Dir/exec-<execution>/volumes/<volume>/; the command's file is written
// to Dir/exec-<execution>/; the process's env is PATH, HOME
// (Dir/exec-<execution>/home), the container's env and, on a GPU profile,
// NVIDIA_VISIBLE_DEVICES; Env returns all of it. An execution whose
// image is not in the fake's registry, or whose job has no registries
// entry (with an identity or a password secret) for it, fails before its
// process runs, as a pull would.
//
// An operation on a job while another runs is 409
// ContainerAppsJobOperationInProgress. A start with a template (the
// containers for one execution) is refused with 400 InvalidParameter:
// the fake does not apply it, and the aca runtime sends none.
//
// Choices the fake makes where Azure's behaviour was not confirmed (each
// is marked where it is made): the GPU quota usages' value strings
// ("ManagedEnvironmentConsumptionT4Gpus"; the display names, "Managed
// Environment Consumption T4 Gpus" and "Managed Environment Consumption
// NCA100 Gpus", are Azure's); quota is enforced at start (400
// QuotaExceeded naming the quota and its limit), not at create; other
// validation errors are 400 "InvalidParameter"; a stop SIGTERMs the main
// process and kills the rest after a grace period; the operation URLs'
// path (.../locations/<loc>/containerappsjobOperationStatuses|Results/<id>).
package acafake

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-containerregistry/pkg/registry"
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
	// SystemIdentityHasAcrPull lets an execution pull with its job's
	// system-assigned identity ("system" in configuration.registries).
	// By default such a pull fails, as Azure's does: the identity is new
	// with the job, so nothing gave it AcrPull before the job's first pull
	// (https://learn.microsoft.com/azure/container-apps/managed-identity-image-pull).
	SystemIdentityHasAcrPull bool
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
	// FailOperation makes the fault match only requests that begin a
	// long-running operation (PUT or DELETE of a job, start, stop of an
	// execution): the request is accepted as usual, and the operation
	// fails at its end instead of taking effect. An Azure-AsyncOperation
	// poll then answers 200 {"status":"Failed","error":{"code":Code,
	// "message":Message}}; a Location poll answers Status (400 when
	// Status is 0) with that body
	// (https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/async-api-reference.md:
	// "Azure-AsyncOperation resource format" and "202 Accepted and
	// Location Headers").
	FailOperation bool
}

// Fake is a running fake. Its servers use TLS with a CA of its own
// (CAPEM).
type Fake struct {
	opts Options
	log  *slog.Logger

	caPEM     []byte
	pool      *x509.CertPool
	transport *http.Transport

	armSrv, regSrv, idSrv *httptest.Server
	idHeader              string
	internal              string // header value that lets the fake's own registry calls in
	reg                   http.Handler

	mu         sync.Mutex
	closed     bool
	tokens     map[string]string // access token -> resource it was issued for
	acrRefresh map[string]bool
	acrAccess  map[string]bool
	jobs       map[string]*job
	ops        map[string]*operation
	faults     []Fault
	requests   map[string]int
	wg         sync.WaitGroup

	// extracted caches the files executions run, by image digest and
	// path: an image's file never changes, and unpacking the agent's
	// layer for every execution is most of a start's time under -race.
	extractMu sync.Mutex
	extracted map[string]string
}

// New starts the fake's servers.
func New(opts Options) (*Fake, error) {
	if opts.SubscriptionID == "" || opts.ResourceGroup == "" || opts.Environment == "" {
		return nil, errors.New("acafake: Options need SubscriptionID, ResourceGroup and Environment")
	}
	if opts.Dir == "" {
		return nil, errors.New("acafake: Options need Dir (a test's t.TempDir())")
	}
	if opts.Location == "" {
		opts.Location = "swedencentral"
	}
	f := &Fake{
		opts:       opts,
		log:        opts.Logger,
		idHeader:   randomHex(16),
		internal:   randomHex(16),
		acrRefresh: map[string]bool{},
		acrAccess:  map[string]bool{},
		jobs:       map[string]*job{},
		ops:        map[string]*operation{},
		requests:   map[string]int{},
	}
	if f.log == nil {
		f.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cert, err := f.makeCerts()
	if err != nil {
		return nil, err
	}
	f.transport = &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: f.pool},
		MaxIdleConnsPerHost: 16,
	}
	f.reg = registry.New(registry.Logger(log.New(io.Discard, "", 0)))

	tlsServer := func(h http.Handler) *httptest.Server {
		s := httptest.NewUnstartedServer(h)
		s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		s.StartTLS()
		return s
	}
	f.armSrv = tlsServer(http.HandlerFunc(f.serveARM))
	f.regSrv = tlsServer(http.HandlerFunc(f.serveRegistry))
	f.idSrv = httptest.NewServer(http.HandlerFunc(f.serveIdentity))
	return f, nil
}

// makeCerts makes the fake's CA and a certificate it signs for 127.0.0.1
// and localhost.
func (f *Fake) makeCerts() (tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "acafake CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "acafake"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	f.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	f.pool = x509.NewCertPool()
	f.pool.AddCert(ca)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// Close stops the servers and every process the fake started, and waits
// for them.
func (f *Fake) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	var running []*execution
	for _, j := range f.jobs {
		for _, e := range j.executions {
			if e.running() {
				running = append(running, e)
			}
		}
	}
	f.wg.Add(len(running))
	f.mu.Unlock()
	for _, e := range running {
		go func() {
			defer f.wg.Done()
			e.terminate()
		}()
	}
	f.wg.Wait()
	f.armSrv.Close()
	f.regSrv.Close()
	f.idSrv.Close()
	f.transport.CloseIdleConnections()
}

// ARMEndpoint is the https:// URL to use as the ARM endpoint (the
// cloud.ResourceManager service's Endpoint).
func (f *Fake) ARMEndpoint() string { return f.armSrv.URL }

// CAPEM is the PEM of the CA that signed the fake's certificates.
func (f *Fake) CAPEM() []byte { return append([]byte(nil), f.caPEM...) }

// HTTPClient trusts the fake's CA.
func (f *Fake) HTTPClient() *http.Client { return &http.Client{Transport: f.transport} }

// ClientOptions are azcore client options that send ARM requests to the
// fake (cloud.ResourceManager's Endpoint is ARMEndpoint, its Audience
// https://management.core.windows.net/) over a transport that trusts the
// fake's CA, with retries that wait milliseconds where Azure gives no
// Retry-After and honour a Retry-After of up to 5 seconds. Use them as arm.ClientOptions{ClientOptions: ...}.
func (f *Fake) ClientOptions() policy.ClientOptions {
	return policy.ClientOptions{
		Cloud: cloud.Configuration{
			ActiveDirectoryAuthorityHost: f.idSrv.URL + "/",
			Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
				cloud.ResourceManager: {Endpoint: f.ARMEndpoint(), Audience: armAudience},
			},
		},
		Transport: f.HTTPClient(),
		// azcore waits a Retry-After up to MaxRetryDelay and gives up on a
		// longer one (runtime/policy_retry.go).
		Retry: policy.RetryOptions{MaxRetries: 3, RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 5 * time.Second},
	}
}

// IdentityEndpoint returns the values of IDENTITY_ENDPOINT and
// IDENTITY_HEADER under which azidentity's ManagedIdentityCredential gets
// tokens from the fake.
func (f *Fake) IdentityEndpoint() (endpoint, header string) {
	return f.idSrv.URL + "/msi/token", f.idHeader
}

// Registry is the fake registry's login server (host:port), served over
// TLS with the fake's CA.
func (f *Fake) Registry() string { return strings.TrimPrefix(f.regSrv.URL, "https://") }

// Inject makes the next request that matches fail as fault says.
func (f *Fake) Inject(fault Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, fault)
}

// takeFault removes and returns the first fault that matches r: one
// with FailOperation when lro (r begins a long-running operation), one
// without otherwise. Under f.mu.
func (f *Fake) takeFault(r *http.Request, lro bool) (Fault, bool) {
	for i, ft := range f.faults {
		if ft.FailOperation != lro {
			continue
		}
		if (ft.Method == "" || strings.EqualFold(ft.Method, r.Method)) && strings.HasSuffix(strings.ToLower(r.URL.Path), strings.ToLower(ft.PathSuffix)) {
			f.faults = append(f.faults[:i], f.faults[i+1:]...)
			return ft, true
		}
	}
	return Fault{}, false
}

// Requests counts the requests the fake answered, by "METHOD suffix"
// where suffix is the path after the resource group (such as
// "PUT /providers/Microsoft.App/jobs/x"): tests check what was called.
func (f *Fake) Requests() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.requests))
	for k, v := range f.requests {
		out[k] = v
	}
	return out
}

// Running lists the jobs that have an execution running now.
func (f *Fake) Running() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for name, j := range f.jobs {
		for _, e := range j.executions {
			if e.running() {
				names = append(names, name)
				break
			}
		}
	}
	sort.Strings(names)
	return names
}

// Crash kills the running execution's process of job, as a replica lost
// with its node: the execution ends Failed.
func (f *Fake) Crash(job string) error {
	e := f.runningExecution(job)
	if e == nil {
		return fmt.Errorf("acafake: job %s has no running execution", job)
	}
	e.kill()
	<-e.done
	return nil
}

// Env returns the environment the execution of job was started with, for
// tests of what the runtime passes.
func (f *Fake) Env(job string) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.jobs[strings.ToLower(job)]
	if j == nil || len(j.executions) == 0 {
		return nil
	}
	e := j.executions[len(j.executions)-1]
	out := make(map[string]string, len(e.env))
	for k, v := range e.env {
		out[k] = v
	}
	return out
}

// ExecutionState is what Execution reports of a job's latest execution.
type ExecutionState struct {
	Name   string
	Status string // Processing (until its process starts), Running, Succeeded, Failed, Stopped
	Reason string // why it failed before its process ran, if it did
	PID    int    // 0 if no process ran
}

// Execution reports the latest execution of job; ok is false when the job
// has none.
func (f *Fake) Execution(job string) (ExecutionState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.jobs[strings.ToLower(job)]
	if j == nil || len(j.executions) == 0 {
		return ExecutionState{}, false
	}
	e := j.executions[len(j.executions)-1]
	return ExecutionState{Name: e.name, Status: e.status, Reason: e.reason, PID: e.pid}, true
}

// Output is what the latest execution of job wrote to stdout and stderr
// (the last 64 KiB).
func (f *Fake) Output(job string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.jobs[strings.ToLower(job)]
	if j == nil || len(j.executions) == 0 {
		return ""
	}
	return j.executions[len(j.executions)-1].out.String()
}

func (f *Fake) runningExecution(job string) *execution {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.jobs[strings.ToLower(job)]
	if j == nil {
		return nil
	}
	for _, e := range j.executions {
		if e.running() {
			return e
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Push stores img in the fake registry as ref (host:port/repo:tag), with
// no authentication: for seeding base images in tests.
var _ = v1.Hash{}
