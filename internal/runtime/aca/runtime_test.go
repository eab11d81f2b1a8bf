//go:build linux && !agentonly

package aca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/acafake"
	"github.com/devgpu/devgpu/sdk"
)

// agentBinary is the static agent the tests' session images carry, built
// once by TestMain.
var agentBinary string

func TestMain(m *testing.M) {
	// Under go test azcore allows polling faster than once a second; the
	// fake answers its operations at the second poll.
	pollEvery = 20 * time.Millisecond
	awaitEvery = 50 * time.Millisecond
	code := func() int {
		dir, err := os.MkdirTemp("", "aca-agent-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		root, err := testutil.ModuleRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		agentBinary = filepath.Join(dir, "devgpu-agent")
		cmd := exec.Command("go", "build", "-tags", "agentonly", "-ldflags=-s -w", "-o", agentBinary, "./cmd/devgpu")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build the static agent: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	testutil.Cleanup()
	os.Exit(code)
}

// testCredential is the link credential of every session in these tests
// (runtimetest's specs carry it); the server mints one per session.
var testCredential = strings.Repeat("c1", 32)

const (
	testSub      = "00000000-0000-0000-0000-0000000000aa"
	testRG       = "devgpu-rg"
	testEnv      = "gpu-env"
	testRegion   = "swedencentral"
	t4Profile    = "Consumption-GPU-NC8as-T4"
	t4QuotaName  = "Managed Environment Consumption T4 Gpus"
	testBaseRepo = "base/tiny:1"
)

// fakeEnv is a fake Azure (ARM, identity, ACR) with a T4 profile, a base
// image in its registry, and a link hub served over TLS on this host,
// where the fake's executions (local processes) reach it.
type fakeEnv struct {
	fake    *acafake.Fake
	hub     *link.Hub
	linkURL string
	linkCA  []byte
	cred    azcore.TokenCredential
	base    string
	dir     string // the fake's Dir
}

func newFakeEnv(t *testing.T, t4Quota int) *fakeEnv {
	t.Helper()
	dir := t.TempDir()
	f, err := acafake.New(acafake.Options{
		SubscriptionID: testSub, ResourceGroup: testRG, Environment: testEnv, Location: testRegion,
		Profiles: map[string]string{"gpu-t4": t4Profile},
		GPUQuota: map[string]int{t4Profile: t4Quota},
		Dir:      dir,
		Logger:   testutil.Logger(t),
	})
	if err != nil {
		t.Fatalf("start the fake: %v", err)
	}
	t.Cleanup(f.Close)
	e := &fakeEnv{fake: f, hub: link.NewHub(testutil.Logger(t)), dir: dir}
	e.hub.SetVerifier(func(_, cred string) (bool, error) { return cred == testCredential, nil })
	srv := httptest.NewTLSServer(e.hub)
	t.Cleanup(srv.Close)
	t.Cleanup(e.hub.Close)
	e.linkURL = srv.URL
	e.linkCA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	endpoint, header := f.IdentityEndpoint()
	e.cred = &identityCredential{endpoint: endpoint, header: header}
	e.base = f.Registry() + "/" + testBaseRepo
	base, err := mutate.Append(empty.Image) // no layers: the fake runs the agent on this host
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Push(e.base, base); err != nil {
		t.Fatalf("seed the base image: %v", err)
	}
	return e
}

// config is a backend over the fake for installation inst.
func (e *fakeEnv) config(t *testing.T, inst string) Config {
	opts := e.fake.ClientOptions()
	return Config{
		Backend: "aca-test", Installation: inst,
		SubscriptionID: testSub, ResourceGroup: testRG, Environment: testEnv,
		GPUTypes: map[string]string{"t4": "gpu-t4"},
		Quota:    map[string]int{"t4": 2},
		Registry: e.fake.Registry(), RegistryIdentity: "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull",
		AgentBinary: agentBinary, DefaultImage: e.base,
		LinkURL: e.linkURL, LinkCA: e.linkCA, Link: e.hub,
		Credential:        e.cred,
		ClientOptions:     &arm.ClientOptions{ClientOptions: opts},
		RegistryTransport: e.fake.HTTPClient().Transport,
		Logger:            testutil.Logger(t),
	}
}

func (e *fakeEnv) runtime(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	r, err := New(testutil.Context(t, testutil.WaitLong), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

// identityCredential gets tokens from the fake's managed identity
// endpoint as azidentity's ManagedIdentityCredential does inside Container
// Apps (GET IDENTITY_ENDPOINT?resource=R&api-version=2019-08-01 with
// X-IDENTITY-HEADER), without the process-wide environment variables that
// credential reads, so that tests with fakes of their own run in parallel.
type identityCredential struct {
	endpoint, header string
	mu               sync.Mutex
	tokens           map[string]azcore.AccessToken
}

func (c *identityCredential) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	resource := strings.TrimSuffix(o.Scopes[0], "/.default")
	c.mu.Lock()
	tok, ok := c.tokens[resource]
	c.mu.Unlock()
	if ok && time.Until(tok.ExpiresOn) > time.Minute {
		return tok, nil
	}
	u := c.endpoint + "?" + url.Values{"resource": {resource}, "api-version": {"2019-08-01"}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	req.Header.Set("X-IDENTITY-HEADER", c.header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		return azcore.AccessToken{}, fmt.Errorf("identity endpoint: %s (%v)", resp.Status, err)
	}
	tok = azcore.AccessToken{Token: body.AccessToken, ExpiresOn: time.Now().Add(time.Hour)}
	c.mu.Lock()
	if c.tokens == nil {
		c.tokens = map[string]azcore.AccessToken{}
	}
	c.tokens[resource] = tok
	c.mu.Unlock()
	return tok, nil
}

func installation(t *testing.T) string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("t%x", b)
}

func spec(name string) runtime.Spec {
	return runtime.Spec{
		SessionID: fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%1e9), Project: "proj", User: "alice",
		GPU:         runtime.GPURequest{Type: "t4", Region: testRegion, Count: 1},
		AgentSecret: strings.Repeat("5e", 32), LinkCredential: testCredential, IdleExit: time.Minute,
	}
}

// start starts the session, fails the test if it does not start, and
// stops it when the test ends (runtimetest.StartSpec with the longer
// wait these tests need: see TestConformance).
func start(t *testing.T, r runtime.Runtime, s runtime.Spec) runtime.Placement {
	t.Helper()
	pl, err := r.Start(testutil.Context(t, testutil.WaitLong), s)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
		defer cancel()
		if err := r.Stop(ctx, s.SessionID); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return pl
}

func listed(t *testing.T, r runtime.Runtime, id string) bool {
	t.Helper()
	list, err := r.List(testutil.Context(t, testutil.WaitShort))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return slices.ContainsFunc(list, func(in runtime.Instance) bool { return in.SessionID == id })
}

// TestConformance runs the runtime conformance suite against the fake:
// the platform (the fake) gives each replica one GPU, the agent links out
// to a hub on this host, and the capacity is the environment's quota as
// the usages API reports it.
func TestConformance(t *testing.T) {
	opts := runtimetest.Options{
		GPU:      runtime.GPURequest{Type: "t4", Region: testRegion, Count: 1},
		Capacity: []runtime.Capacity{{Type: "t4", Region: testRegion, Total: 2}},
		// Each check has a fake of its own, which pulls the session image
		// and unpacks the agent (tens of megabytes) for every execution:
		// slow under the race detector on a small machine, and slower
		// when the checks compete for its cores. runtimetest's IdleExit
		// check starts within testutil.WaitMedium whatever StartTimeout
		// says.
		Serial:       true,
		StartTimeout: testutil.WaitLong,
	}
	runtimetest.Run(t, opts, func(t *testing.T) runtimetest.Factory {
		e := newFakeEnv(t, 2)
		cfg := e.config(t, installation(t))
		cfg.Quota, cfg.QuotaFromAzure = nil, true
		return func() runtime.Runtime { return e.runtime(t, cfg) }
	})
}

// TestQuotaRefusal: a start beyond the environment's GPU quota fails with
// Azure's refusal naming the quota, and leaves no job behind.
func TestQuotaRefusal(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 1)
	r := e.runtime(t, e.config(t, installation(t))) // the config says 2: Azure says 1
	first := spec("quota1")
	start(t, r, first)
	second := spec("quota2")
	_, err := r.Start(testutil.Context(t, testutil.WaitLong), second)
	if err == nil {
		_ = r.Stop(context.Background(), second.SessionID)
		t.Fatal("a session beyond the environment's GPU quota started")
	}
	if !strings.Contains(err.Error(), t4QuotaName) || !strings.Contains(err.Error(), "quota") {
		t.Fatalf("Start beyond the quota: %q, want it to name the quota %q", err, t4QuotaName)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("the refusal %q is not one line", err)
	}
	// What the user is told: the quota, not the backend's resource ids.
	refused, ok := errors.AsType[*runtime.RefusedError](err)
	if !ok || !strings.Contains(refused.Message, t4QuotaName) || strings.Contains(refused.Message, testRG) || strings.Contains(refused.Message, "/subscriptions/") {
		t.Fatalf("Start beyond the quota: %#v, want a runtime.RefusedError whose message names the quota %q and no resource", err, t4QuotaName)
	}
	if listed(t, r, second.SessionID) {
		t.Fatal("the refused session is listed")
	}
	if got := e.fake.Requests()["DELETE /providers/Microsoft.App/jobs/"+r.cfg.jobName(second.SessionID)]; got != 1 {
		t.Fatalf("the refused start sent %d DELETEs of its job, want 1", got)
	}
	if _, err := r.jobs.Get(testutil.Context(t, testutil.WaitShort), testRG, r.cfg.jobName(second.SessionID), nil); !notFound(err) {
		t.Fatalf("the refused session's job is still there: %v", err)
	}
	if !listed(t, r, first.SessionID) {
		t.Fatal("the first session is no longer listed")
	}
}

// TestThrottledRequestsAreRetried: a 429 with Retry-After on the job's
// creation is retried (azcore's retry policy honours Retry-After) and the
// session starts.
func TestThrottledRequestsAreRetried(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	r := e.runtime(t, e.config(t, installation(t)))
	s := spec("throttled")
	path := "/providers/Microsoft.App/jobs/" + r.cfg.jobName(s.SessionID)
	e.fake.Inject(acafake.Fault{Method: "PUT", PathSuffix: path, Status: http.StatusTooManyRequests, Code: "TooManyRequests", Message: "Too many requests.", RetryAfter: 1})
	start(t, r, s)
	if got := e.fake.Requests()["PUT "+path]; got != 2 {
		t.Fatalf("the job's PUT was sent %d times, want 2 (the throttled one and its retry)", got)
	}
	if got := runtimetest.ExecOut(t, r, s, "echo -n $DEVGPU_SESSION_ID"); got != s.SessionID {
		t.Fatalf("the session says it is %q", got)
	}
}

// TestOwnership: a runtime lists, reaches and stops only jobs with its
// installation's and backend's tags; another installation's session on
// the same hub and resource group keeps running and linked.
func TestOwnership(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	mine := e.runtime(t, e.config(t, installation(t)))
	theirs := e.runtime(t, e.config(t, installation(t)))
	s := spec("theirs")
	start(t, theirs, s)
	job := theirs.cfg.jobName(s.SessionID)
	ctx := testutil.Context(t, testutil.WaitMedium)
	if listed(t, mine, s.SessionID) {
		t.Fatal("another installation's session is listed")
	}
	if _, err := mine.Connect(ctx, s.SessionID); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("Connect to another installation's session: %v, want ErrNotFound", err)
	}
	if err := mine.Stop(ctx, s.SessionID); err != nil {
		t.Fatalf("Stop of another installation's session: %v", err)
	}
	if !slices.Contains(e.fake.Running(), job) || !e.hub.Linked(s.SessionID) {
		t.Fatalf("another installation's Stop touched the session: running %v, linked %v", e.fake.Running(), e.hub.Linked(s.SessionID))
	}
	for k, n := range e.fake.Requests() {
		if strings.HasSuffix(k, "/jobs/"+job) && strings.HasPrefix(k, "DELETE") || strings.Contains(k, job+"/executions/") && strings.HasSuffix(k, "/stop") {
			t.Fatalf("another installation's Stop sent %s (%d times)", k, n)
		}
	}
	// A job carrying this runtime's name but another installation's tags
	// (a name collision, or a job someone else made) is not this runtime's
	// either.
	forged := spec("forged")
	name := mine.cfg.jobName(forged.SessionID)
	j := theirs.cfg.job(forged, e.fake.Registry()+"/"+testBaseRepo)
	p, err := theirs.jobs.BeginCreateOrUpdate(ctx, testRG, name, j, nil)
	if err == nil {
		_, err = p.PollUntilDone(ctx, pollOpts())
	}
	if err != nil {
		t.Fatalf("create the forged job: %v", err)
	}
	if _, err := mine.Start(ctx, forged); err == nil || !strings.Contains(err.Error(), "exists and is not aca backend") {
		t.Fatalf("Start over a job with another installation's tags: %v, want a refusal", err)
	}
	if got := e.fake.Requests()["PUT /providers/Microsoft.App/jobs/"+name]; got != 1 {
		t.Fatalf("the job with another installation's tags was PUT %d times, want once (its creation)", got)
	}
	if err := mine.Stop(ctx, forged.SessionID); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := mine.jobs.Get(ctx, testRG, name, nil); err != nil {
		t.Fatalf("a job with another installation's tags was deleted: %v", err)
	}
	if got := e.fake.Requests()["DELETE /providers/Microsoft.App/jobs/"+name]; got != 0 {
		t.Fatalf("Stop sent DELETE for a job with another installation's tags")
	}
	if _, err := mine.Connect(ctx, forged.SessionID); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("Connect to a job with another installation's tags: %v, want ErrNotFound", err)
	}
}

// sessionManifestPuts counts the session images pushed: PUTs of manifests
// to the runtime's repository.
func sessionManifestPuts(f *acafake.Fake) int {
	n := 0
	for k, v := range f.Requests() {
		if strings.HasPrefix(k, "PUT registry /v2/"+DefaultRepository+"/manifests/") {
			n += v
		}
	}
	return n
}

// TestImagePushedOnce: two sessions of one base image push the session
// image once; a restarted control plane (a new runtime, empty cache) finds
// it in the registry and pushes nothing either. A base that does not exist
// fails the start with one sentence that says so.
func TestImagePushedOnce(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 3)
	cfg := e.config(t, installation(t))
	cfg.Quota["t4"] = 3
	r := e.runtime(t, cfg)
	var steps []string
	var mu sync.Mutex
	a := spec("image1")
	a.Progress = func(step string, _, _ int64) { mu.Lock(); steps = append(steps, step); mu.Unlock() }
	start(t, r, a)
	if got := sessionManifestPuts(e.fake); got != 1 {
		t.Fatalf("the first session pushed %d manifests, want 1", got)
	}
	mu.Lock()
	if !slices.Contains(steps, "preparing the session image") {
		t.Errorf("Start said %q, not that it prepared the session image", steps)
	}
	mu.Unlock()
	b := spec("image2")
	start(t, r, b)
	again := e.runtime(t, cfg)
	c := spec("image3")
	start(t, again, c)
	if got := sessionManifestPuts(e.fake); got != 1 {
		t.Fatalf("three sessions of one base pushed %d manifests, want 1", got)
	}
	// Each runtime exchanged its Azure token for an ACR refresh token
	// once, and used it for every push and pull since.
	if got := e.fake.Requests()["POST registry /oauth2/exchange"]; got != 2 {
		t.Fatalf("two runtimes made %d token exchanges, want 2", got)
	}

	missing := spec("nobase")
	missing.Image = e.fake.Registry() + "/base/missing:1"
	_, err := r.Start(testutil.Context(t, testutil.WaitLong), missing)
	if err == nil || !strings.Contains(err.Error(), "does not exist in its registry") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Start with a missing base image: %v, want one sentence that it does not exist", err)
	}
	if got := e.fake.Requests()["PUT /providers/Microsoft.App/jobs/"+r.cfg.jobName(missing.SessionID)]; got != 0 {
		t.Fatal("a job was created for a missing image")
	}
}

// TestRefusals: what the backend can never run is refused before anything
// is made in Azure.
func TestRefusals(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	r := e.runtime(t, e.config(t, installation(t)))
	ctx := testutil.Context(t, testutil.WaitMedium)
	for _, tc := range []struct {
		name   string
		modify func(*runtime.Spec)
		want   string
	}{
		{"two GPUs", func(s *runtime.Spec) { s.GPU.Count = 2 }, "Container Apps gives each replica one GPU; ask for 1"},
		{"egress none", func(s *runtime.Spec) { s.Egress = sdk.Egress{Mode: sdk.EgressNone} }, "cannot enforce the project's egress policy \"none\""},
		{"egress allow-list", func(s *runtime.Spec) {
			s.Egress = sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"pypi.org:443"}}
		}, "cannot enforce the project's egress policy \"allow-list\""},
		{"other region", func(s *runtime.Spec) { s.GPU.Region = "westus3" }, "region swedencentral only"},
		{"other type", func(s *runtime.Spec) { s.GPU.Type = "a100" }, "offers no GPU of type \"a100\""},
	} {
		s := spec("refused")
		tc.modify(&s)
		before := e.fake.Requests()
		_, err := r.Start(ctx, s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Start = %v, want %q", tc.name, err, tc.want)
		}
		after := e.fake.Requests()
		for k, n := range after {
			if n != before[k] && (strings.HasPrefix(k, "PUT") || strings.HasPrefix(k, "POST")) {
				t.Errorf("%s: the refused start sent %s", tc.name, k)
			}
		}
	}
}

// TestCrashedSessionLeavesList: a replica lost (its process killed) ends
// its execution Failed; the session leaves List, and Stop still removes
// its job.
func TestCrashedSessionLeavesList(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	r := e.runtime(t, e.config(t, installation(t)))
	s := spec("crash")
	start(t, r, s)
	if !listed(t, r, s.SessionID) {
		t.Fatal("the started session is not listed")
	}
	job := r.cfg.jobName(s.SessionID)
	if err := e.fake.Crash(job); err != nil {
		t.Fatal(err)
	}
	// Its link ends with its process; until then the link is proof the
	// execution lives.
	testutil.Eventually(t, testutil.WaitMedium, "the crashed session leaves List", func() bool {
		return !listed(t, r, s.SessionID)
	})
	if err := r.Stop(testutil.Context(t, testutil.WaitMedium), s.SessionID); err != nil {
		t.Fatalf("Stop after the crash: %v", err)
	}
	if _, err := r.jobs.Get(testutil.Context(t, testutil.WaitShort), testRG, job, nil); !notFound(err) {
		t.Fatalf("the crashed session's job is still there after Stop: %v", err)
	}
}

// TestStartFailsWhenTheExecutionEnds: an agent that exits before it links
// (here: it cannot read its link CA, a wrong PEM) fails the start at once
// with the execution's end, not at the caller's deadline, and the job is
// removed.
func TestStartFailsWhenTheExecutionEnds(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	cfg := e.config(t, installation(t))
	cfg.LinkCA = []byte("not a certificate")
	r := e.runtime(t, cfg)
	s := spec("ends")
	ctx := testutil.Context(t, testutil.WaitLong)
	_, err := r.Start(ctx, s)
	if err == nil {
		_ = r.Stop(context.Background(), s.SessionID)
		t.Fatal("a session whose agent exits started")
	}
	if !strings.Contains(err.Error(), "ended Failed before its agent linked") {
		t.Fatalf("Start = %v, want the execution's end", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Start waited for its deadline")
	}
	if _, err := r.jobs.Get(testutil.Context(t, testutil.WaitShort), testRG, r.cfg.jobName(s.SessionID), nil); !notFound(err) {
		t.Fatalf("the failed session's job is still there: %v", err)
	}
}

// TestSessionEnvironment: what the job's container was started with: the
// session's environment, the GPU the platform gave, and no secret.
func TestSessionEnvironment(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	r := e.runtime(t, e.config(t, installation(t)))
	s := spec("env")
	s.Env = map[string]string{"FOO": "bar"}
	pl := start(t, r, s)
	env := e.fake.Env(r.cfg.jobName(s.SessionID))
	for k, v := range map[string]string{"DEVGPU_SESSION_ID": s.SessionID, "DEVGPU_PROJECT": "proj", "DEVGPU_USER": "alice", "DEVGPU_GPU_TYPE": "t4", "FOO": "bar", "DEVGPU_NODE": "aca/" + testEnv} {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	for k, v := range env {
		if strings.Contains(v, s.AgentSecret) || strings.Contains(v, s.LinkCredential) {
			t.Errorf("env %s holds a secret", k)
		}
	}
	if len(pl.Devices) != 1 || !strings.HasPrefix(pl.Devices[0], "GPU-sim-") || pl.Node != "aca/"+testEnv {
		t.Fatalf("placement %+v, want one simulated GPU on aca/%s", pl, testEnv)
	}
	if want := testRG + "/" + r.cfg.jobName(s.SessionID) + "/"; !strings.HasPrefix(pl.Handle, want) || len(pl.Handle) == len(want) {
		t.Fatalf("handle %q, want %s<execution>", pl.Handle, want)
	}
	// The agent trusts the link's CA from the job's link-ca secret, the
	// file the platform (the fake) wrote from it for the execution.
	x, ok := e.fake.Execution(r.cfg.jobName(s.SessionID))
	if !ok {
		t.Fatal("the session's job has no execution")
	}
	ca, err := os.ReadFile(filepath.Join(e.dir, "exec-"+x.Name, "volumes", volumeSecret, secretCA))
	if err != nil {
		t.Fatalf("the execution's link-ca file: %v", err)
	}
	if string(ca) != string(e.linkCA) {
		t.Fatalf("the execution's link-ca file holds %q, want the link's CA", ca)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		t.Fatal("the execution's link-ca file is not PEM")
	}
}

// TestNewErrors: a missing environment or a profile without GPUs is one
// clear error at New.
func TestNewErrors(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	ctx := testutil.Context(t, testutil.WaitMedium)
	cfg := e.config(t, installation(t))
	cfg.Environment = "nope"
	if _, err := New(ctx, cfg); err == nil || !strings.Contains(err.Error(), "managed environment nope not found in resource group "+testRG) {
		t.Errorf("New with a missing environment: %v", err)
	}
	cfg = e.config(t, installation(t))
	cfg.GPUTypes = map[string]string{"t4": "Consumption"}
	if _, err := New(ctx, cfg); err == nil || !strings.Contains(err.Error(), "which has no GPU") {
		t.Errorf("New with a CPU profile: %v", err)
	}
	cfg = e.config(t, installation(t))
	cfg.GPUTypes = map[string]string{"t4": "gpu-missing"}
	if _, err := New(ctx, cfg); err == nil || !strings.Contains(err.Error(), "has no workload profile gpu-missing") {
		t.Errorf("New with a missing profile: %v", err)
	}
	r := e.runtime(t, e.config(t, installation(t)))
	if r.cfg.region != testRegion {
		t.Errorf("region %q, want the environment's location %q", r.cfg.region, testRegion)
	}
	cfg = e.config(t, installation(t))
	cfg.RegistryIdentity = "system"
	if _, err := New(ctx, cfg); err == nil || !strings.Contains(err.Error(), "has no AcrPull on the registry at its first pull") {
		t.Errorf("New with registry_identity system: %v", err)
	}
}

// blockLinks makes the hub hold every agent's link in verification until
// the test ends: a start then waits for an agent that never links.
func (e *fakeEnv) blockLinks(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	e.hub.SetVerifier(func(_, _ string) (bool, error) { <-release; return false, nil })
}

// gone fails the test unless the session's job is deleted and nothing of
// it runs.
func gone(t *testing.T, e *fakeEnv, r *Runtime, id string) {
	t.Helper()
	job := r.cfg.jobName(id)
	if _, err := r.jobs.Get(testutil.Context(t, testutil.WaitShort), testRG, job, nil); !notFound(err) {
		t.Fatalf("the session's job is still there: %v", err)
	}
	if slices.Contains(e.fake.Running(), job) {
		t.Fatalf("the session's job %s still runs an execution", job)
	}
}

// TestCancelledStartLeavesNoJob: a start cancelled after its job was
// created, or while it waits for its agent, deletes the job and stops its
// execution; a second start of the same id while one is in flight is
// refused and creates nothing.
func TestCancelledStartLeavesNoJob(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, at string }{
		{"before its execution", "starting the session's job execution"},
		{"awaiting its agent", "the execution is running; waiting for the session's agent to connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newFakeEnv(t, 2)
			e.blockLinks(t)
			r := e.runtime(t, e.config(t, installation(t)))
			s := spec("cancel")
			ctx, cancel := context.WithCancel(testutil.Context(t, testutil.WaitLong))
			defer cancel()
			var again error
			s.Progress = func(step string, _, _ int64) {
				if step != tc.at {
					return
				}
				twice := s
				twice.Progress = nil
				_, again = r.Start(testutil.Context(t, testutil.WaitShort), twice)
				cancel()
			}
			_, err := r.Start(ctx, s)
			if err == nil {
				_ = r.Stop(context.Background(), s.SessionID)
				t.Fatal("a cancelled start started")
			}
			if !errors.Is(err, context.Canceled) && !strings.Contains(err.Error(), "context canceled") {
				t.Fatalf("Start = %v, want it cancelled", err)
			}
			if again == nil || !strings.Contains(again.Error(), "a start of it is in progress") {
				t.Fatalf("a second Start of the same id in flight: %v, want it refused", again)
			}
			gone(t, e, r, s.SessionID)
			if got := e.fake.Requests()["PUT /providers/Microsoft.App/jobs/"+r.cfg.jobName(s.SessionID)]; got != 1 {
				t.Fatalf("the job was PUT %d times, want 1", got)
			}
		})
	}
}

// TestStartFailsWhenTheJobIsDeleted: a start whose job is deleted behind
// it fails at once, in one sentence, rather than wait for its agent.
func TestStartFailsWhenTheJobIsDeleted(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	e.blockLinks(t)
	r := e.runtime(t, e.config(t, installation(t)))
	s := spec("deleted")
	ctx := testutil.Context(t, testutil.WaitLong)
	deleted := false
	s.Progress = func(step string, _, _ int64) {
		if deleted || !strings.HasPrefix(step, "the execution is running") {
			return
		}
		deleted = true
		p, err := r.jobs.BeginDelete(ctx, testRG, r.cfg.jobName(s.SessionID), nil)
		if err == nil {
			_, err = p.PollUntilDone(ctx, pollOpts())
		}
		if err != nil {
			t.Errorf("delete the job behind the start: %v", err)
		}
	}
	_, err := r.Start(ctx, s)
	if err == nil {
		_ = r.Stop(context.Background(), s.SessionID)
		t.Fatal("a session whose job was deleted started")
	}
	if !strings.Contains(err.Error(), "was deleted while it started") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Start = %v, want one sentence that the job was deleted", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Start waited for its deadline")
	}
	gone(t, e, r, s.SessionID)
}

// TestSweepDeletesEndedJobs: a job whose execution ended and that no
// session of the runtime holds (a restarted control plane's) is deleted
// once endedGrace has passed since its end, and not before; a runtime
// that knows the session leaves it to the control plane's Stop.
func TestSweepDeletesEndedJobs(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	cfg := e.config(t, installation(t))
	r := e.runtime(t, cfg)
	s := spec("sweep")
	start(t, r, s)
	job := r.cfg.jobName(s.SessionID)
	if err := e.fake.Crash(job); err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t, testutil.WaitLong)
	later := time.Now().Add(endedGrace + time.Minute)
	exists := func() bool {
		_, err := r.jobs.Get(testutil.Context(t, testutil.WaitShort), testRG, job, nil)
		if err != nil && !notFound(err) {
			t.Fatal(err)
		}
		return err == nil
	}
	r.sweep(ctx, later)
	if !exists() {
		t.Fatal("the sweep deleted the job of a session its runtime knows")
	}
	restarted := e.runtime(t, cfg)
	restarted.sweep(ctx, time.Now())
	if !exists() {
		t.Fatal("the sweep deleted a job that ended within the grace")
	}
	restarted.sweep(ctx, later)
	if exists() {
		t.Fatal("the sweep left a job that ended longer than the grace ago")
	}
}

// TestListedStartedAt: a session listed by a restarted runtime has the
// time it started, never zero.
func TestListedStartedAt(t *testing.T) {
	t.Parallel()
	e := newFakeEnv(t, 2)
	cfg := e.config(t, installation(t))
	r := e.runtime(t, cfg)
	s := spec("startedat")
	before := time.Now().Add(-time.Minute)
	start(t, r, s)
	for _, rt := range []*Runtime{r, e.runtime(t, cfg)} {
		list, err := rt.List(testutil.Context(t, testutil.WaitShort))
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(list, func(in runtime.Instance) bool { return in.SessionID == s.SessionID })
		if i < 0 {
			t.Fatal("the session is not listed")
		}
		if got := list[i].StartedAt; got.Before(before) || got.After(time.Now().Add(time.Minute)) {
			t.Fatalf("StartedAt %v, want about now", got)
		}
	}
}
