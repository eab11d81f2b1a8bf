//go:build linux

package e2e

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/kwokcluster"
	"github.com/devgpu/devgpu/sdk"
)

// The scale test's shape: 100 fake nodes with 8 GPUs each, half in each
// region, and 100 users each asking for 5 one-GPU sessions at once.
const (
	scaleNodes       = 100
	scaleGPUsPerNode = 8
	scaleUsers       = 100
	scaleRequests    = 5 // per user
	scaleUsersPerPrj = 5
	scaleWest        = "westus3"
	scaleEast        = "eastus"
	scaleType        = "a100"
	scaleBackend     = "kwok"

	// scaleWestQuota is the organisation's quota of a100s in westus3, below
	// what its 10 users ask for (50), so that it binds there.
	scaleWestQuota = 30
	// scaleEastCapacity is eastus's a100s; its 90 users ask for more
	// (435 once their caps apply), so that capacity binds there.
	scaleEastCapacity = scaleNodes / 2 * scaleGPUsPerNode
	// scaleUserCap and scaleProjectCap are the caps of the capped projects.
	scaleUserCap    = 4
	scaleProjectCap = 20

	// scaleDeadline bounds the burst, until every request is running,
	// queued or refused. It took 4m18s on 2 cores while the kube runtime's
	// client kept client-go's default rate limit (5 requests a second, 3
	// objects a session); admission itself took 5 s.
	scaleDeadline = 8 * time.Minute
	// scaleSampleEvery is how often the invariants are checked during the
	// burst: often enough to catch a cap exceeded for a moment, rarely
	// enough that listing 500 sessions does not slow the burst down.
	scaleSampleEvery = 100 * time.Millisecond
	// scaleWait is how long queued requests wait: past the test's end.
	scaleWait = 30 * time.Minute
	// scaleGrowth is how many GPUs one eastus node gains in the capacity
	// change.
	scaleGrowth = 4
)

// scaleProject is one project of the scale test: its region and caps.
type scaleProject struct {
	name            string
	region          string
	maxGPUs         int // 0: no cap
	maxGPUsPerUser  int // 0: no cap
	capacityBinding bool
}

// scaleProjects: p00-p01 ask for westus3 (the quota binds), p02-p03 have a
// per-user cap, p04 a project cap, p05-p19 none (capacity binds).
func scaleProjects() []scaleProject {
	var ps []scaleProject
	for i := range scaleUsers / scaleUsersPerPrj {
		p := scaleProject{name: fmt.Sprintf("p%02d", i), region: scaleEast}
		switch {
		case i < 2:
			p.region = scaleWest
		case i < 4:
			p.maxGPUsPerUser = scaleUserCap
		case i == 4:
			p.maxGPUs = scaleProjectCap
		default:
			p.capacityBinding = true
		}
		ps = append(ps, p)
	}
	return ps
}

// outcome is what became of one request. Its request's goroutine writes
// it (a queued one can still be placed later); read it through get.
type outcome struct {
	mu                    sync.Mutex
	user, project, region string
	wait                  bool
	sent                  time.Time
	// decided is when admission decided: the session's creation (admitted
	// or queued, stamped inside admission's transaction) or the refusal's
	// arrival.
	decided time.Time
	// kind is "placed", "queued" or "refused"; reason is why it queued or
	// was refused.
	kind, reason string
	session      sdk.Session
	running      time.Time // when CreateSession returned it running
	err          error     // anything else: a failure
}

// scaleResult is a copy of an outcome's fields, read under its lock.
type scaleResult struct {
	user, project, region string
	wait                  bool
	sent, decided         time.Time
	kind, reason          string
	session               sdk.Session
	running               time.Time
	err                   error
}

func (o *outcome) get() scaleResult {
	o.mu.Lock()
	defer o.mu.Unlock()
	return scaleResult{o.user, o.project, o.region, o.wait, o.sent, o.decided, o.kind, o.reason, o.session, o.running, o.err}
}

// TestKubeScale is the scale test on kwok: 100 fake nodes with 8
// GPUs each in two regions, and 500 concurrent session requests from 100
// users across 20 projects with per-user and project caps and an org
// quota, against a real devgpu server with a kube backend. The test plays
// each session's agent (kwok runs no container): it reads the link
// credential from the Pod's Secret and links with it, serving a real agent
// on the link. It checks that no cap, quota or capacity is exceeded at any
// sampled moment, that every request is placed, queued or refused with a
// reason, and that the totals come out exact; then that a node's GPU count
// change reaches admission. It logs the time per admission and how long a
// capacity change takes to be seen.
func TestKubeScale(t *testing.T) {
	if testing.Short() {
		t.Skip("the scale test runs 500 sessions on a kwok cluster; it is left out of -short")
	}
	c := kwokcluster.Get(t)
	t.Cleanup(func() {
		if err := kwokcluster.Stop(); err != nil {
			t.Error(err)
		}
	})
	nodes := c.Nodes(t, scaleNodes, scaleGPUsPerNode, scaleWest, scaleEast)

	e := newScaleEnv(t, c)
	admin := e.sdkClient(t, e.adminToken(t))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	agents := playAgents(ctx, t, c, e.caFile(t))
	t.Cleanup(agents.stop)

	projects := scaleProjects()
	tokens := setUpScale(t, admin, projects)

	wantPools(t, admin, map[string]int{scaleWest: scaleNodes / 2 * scaleGPUsPerNode, scaleEast: scaleEastCapacity})

	// The invariants, sampled through the whole burst.
	sampler := startSampler(t, admin, c, projects)

	// The burst: every request released at once.
	outcomes := make([]*outcome, 0, scaleUsers*scaleRequests)
	var wg sync.WaitGroup
	decided := make(chan struct{}, scaleUsers*scaleRequests)
	release := make(chan struct{})
	for u := range scaleUsers {
		p := projects[u/scaleUsersPerPrj]
		user := fmt.Sprintf("u%03d", u)
		cl := e.sdkClient(t, tokens[user])
		for r := range scaleRequests {
			o := &outcome{user: user, project: p.name, region: p.region, wait: (u+r)%2 == 0}
			outcomes = append(outcomes, o)
			wg.Go(func() {
				<-release
				request(ctx, cl, o, decided)
			})
		}
	}
	start := time.Now()
	close(release)
	deadline := time.After(scaleDeadline)
	for range outcomes {
		select {
		case <-decided:
		case <-deadline:
			t.Fatalf("after %s, only some of the %d requests were placed, queued or refused", scaleDeadline, len(outcomes))
		}
	}
	burst := time.Since(start) // timing: a figure the issue asks this test to report, asserted on nothing

	// Every request: placed, queued or refused, each with its reason.
	results := make([]scaleResult, len(outcomes))
	counts := map[string]int{}
	for i, o := range outcomes {
		r := o.get()
		results[i] = r
		switch {
		case r.err != nil:
			t.Errorf("%s's request in %s failed: %v", r.user, r.project, r.err)
		case r.kind == "placed":
			s := r.session
			if s.State != sdk.StateRunning || s.Backend != scaleBackend || s.Region != r.region ||
				!strings.HasPrefix(s.Node, "kwok-"+r.region+"-") || len(s.GPUs) != 1 || s.GPUs[0] != "GPU-kwok-"+s.ID {
				t.Errorf("%s's placed session %+v: want running on backend %s, a %s node, with the one device its agent reported", r.user, s, scaleBackend, r.region)
			}
		case r.kind == "queued" || r.kind == "refused":
			if r.reason == "" {
				t.Errorf("%s's request in %s was %s without a reason", r.user, r.project, r.kind)
			}
			if r.kind == "queued" && !r.wait {
				t.Errorf("%s's request in %s queued without asking to wait", r.user, r.project)
			}
		default:
			t.Errorf("%s's request in %s has no outcome", r.user, r.project)
		}
		counts[r.kind]++
	}
	if t.Failed() {
		t.FailNow()
	}

	// Exact totals: the quota binds in westus3, capacity in eastus. A
	// queued request is still admitted if a start fails and frees its GPU,
	// so wait for the store to settle on them.
	testutil.Eventually(t, testutil.WaitLong, fmt.Sprintf("%d sessions running in %s and %d in %s", scaleWestQuota, scaleWest, scaleEastCapacity, scaleEast), func() bool {
		h := held(t, admin)
		return h.running[scaleWest] == scaleWestQuota && h.running[scaleEast] == scaleEastCapacity &&
			h.region[scaleWest] == scaleWestQuota && h.region[scaleEast] == scaleEastCapacity
	})
	sampler.check(t)

	// Time per admission, and to a running session.
	var admit, run []time.Duration
	reasons := map[string]int{}
	for _, r := range results {
		if !r.decided.IsZero() {
			admit = append(admit, max(r.decided.Sub(r.sent), 0))
		}
		if r.kind == "placed" {
			run = append(run, r.running.Sub(r.sent))
		} else {
			// Grouped without the queue position.
			reasons[r.kind+": "+queuePosition.ReplaceAllString(r.reason, "")]++
		}
	}
	t.Logf("burst: %d requests from %d users in %d projects, all decided in %s: %d placed, %d queued, %d refused",
		len(outcomes), scaleUsers, len(projects), burst.Round(time.Millisecond), counts["placed"], counts["queued"], counts["refused"])
	for _, why := range slices.Sorted(maps.Keys(reasons)) {
		t.Logf("  %3d %s", reasons[why], why)
	}
	// All 500 arrive at once and admission is one transaction at a time,
	// so a request's wait is mostly the admissions ahead of it: the span
	// of the decisions over their number is the time one admission takes.
	first, last := results[0].decided, results[0].decided
	for _, r := range results {
		if r.decided.Before(first) {
			first = r.decided
		}
		if r.decided.After(last) {
			last = r.decided
		}
	}
	t.Logf("time per admission: %s each (%d decisions in %s, one transaction at a time); request sent to its decision: p50 %s, p99 %s, max %s",
		(last.Sub(first) / time.Duration(len(results))).Round(10*time.Microsecond), len(results), last.Sub(first).Round(time.Millisecond),
		pct(admit, 50), pct(admit, 99), pct(admit, 100))
	t.Logf("time to a running session (request sent to running: admitted, Pod placed, agent linked): p50 %s, p99 %s, max %s", pct(run, 50), pct(run, 99), pct(run, 100))

	// A capacity change reaches admission: one eastus node gains GPUs, and
	// as many waiting eastus requests are admitted.
	if h := held(t, admin); h.queued[scaleEast] < scaleGrowth {
		t.Fatalf("only %d requests wait in %s; the capacity change needs %d", h.queued[scaleEast], scaleEast, scaleGrowth)
	}
	node := nodes[len(nodes)-1] // an eastus node: the regions alternate
	if !strings.HasPrefix(node, "kwok-"+scaleEast+"-") {
		t.Fatalf("node %s is not in %s", node, scaleEast)
	}
	sampler.allow(scaleEast, scaleEastCapacity+scaleGrowth, node, scaleGPUsPerNode+scaleGrowth)
	grown := time.Now()
	if err := c.SetNodeGPUs(ctx, node, scaleGPUsPerNode+scaleGrowth); err != nil {
		t.Fatal(err)
	}
	seenGrow := waitPool(t, admin, scaleEast, scaleEastCapacity+scaleGrowth, grown)
	testutil.Eventually(t, testutil.WaitLong, fmt.Sprintf("%d more sessions admitted in %s", scaleGrowth, scaleEast), func() bool {
		return held(t, admin).region[scaleEast] == scaleEastCapacity+scaleGrowth
	})
	admitted := time.Since(grown) // timing: reported, as the issue asks (how long capacity takes to reflect a change)
	// And back: a node losing GPUs is seen as quickly, and nothing more is
	// admitted (the sessions already running keep their GPUs).
	shrunk := time.Now()
	if err := c.SetNodeGPUs(ctx, node, scaleGPUsPerNode); err != nil {
		t.Fatal(err)
	}
	seenShrink := waitPool(t, admin, scaleEast, scaleEastCapacity, shrunk)
	t.Logf("capacity change: node %s from %d to %d GPUs seen by admission (the gpus API) after %s; %d waiting requests admitted %s after the change",
		node, scaleGPUsPerNode, scaleGPUsPerNode+scaleGrowth, seenGrow.Round(time.Millisecond), scaleGrowth, admitted.Round(time.Millisecond))
	t.Logf("capacity change: node %s back to %d GPUs seen after %s", node, scaleGPUsPerNode, seenShrink.Round(time.Millisecond))
	// A request now is refused for capacity, with the reason.
	_, err := e.sdkClient(t, tokens["u099"]).CreateSession(testutil.Context(t, testutil.WaitMedium),
		sdk.CreateSessionRequest{Project: "p19", GPUType: scaleType, Region: scaleEast}, nil)
	var refusal *sdk.Error
	switch {
	case err == nil:
		t.Errorf("a request in %s was admitted with every GPU there held", scaleEast)
	case !errors.As(err, &refusal) || refusal.Problem.Detail == "":
		t.Errorf("a request in %s with every GPU held: %v, want a refusal with a reason", scaleEast, err)
	}
	sampler.stop()
	sampler.check(t)
	if h := held(t, admin); h.region[scaleEast] != scaleEastCapacity+scaleGrowth {
		t.Errorf("after the shrink, %d GPUs are held in %s, want the %d held before it", h.region[scaleEast], scaleEast, scaleEastCapacity+scaleGrowth)
	}

	// Give up the waiting requests (their clients go away).
	cancel()
	wg.Wait()
}

// request sends one create and records its outcome, signalling decided
// once it is placed, queued or refused (a queued request then keeps
// waiting, and its outcome may become placed later).
func request(ctx context.Context, cl *sdk.Client, o *outcome, decided chan<- struct{}) {
	req := sdk.CreateSessionRequest{Project: o.project, GPUType: scaleType, Region: o.region, Progress: true}
	if o.wait {
		req.Wait = sdk.Duration(scaleWait)
	}
	var once sync.Once
	signal := func() { once.Do(func() { decided <- struct{}{} }) }
	o.mu.Lock()
	o.sent = time.Now()
	o.mu.Unlock()
	s, err := cl.CreateSession(ctx, req, func(ev sdk.SessionEvent) {
		if ev.Reason == "" || ev.ID == "" {
			return // a step of a slow start, or a later queue event
		}
		// The first queue event: admission queued it, with a reason. The
		// queued session's creation is when admission decided.
		decidedAt := time.Now()
		if q, err := cl.Session(ctx, ev.ID); err == nil {
			decidedAt = q.CreatedAt
		}
		o.mu.Lock()
		if o.kind == "" {
			o.kind, o.reason, o.decided = "queued", ev.Reason, decidedAt
		}
		o.mu.Unlock()
		signal()
	})
	now := time.Now()
	var problem *sdk.Error
	o.mu.Lock()
	switch {
	case err == nil:
		if o.kind == "" {
			o.decided = s.CreatedAt
		}
		o.kind, o.session, o.running = "placed", s, now
	case errors.As(err, &problem) && o.kind == "":
		o.kind, o.reason, o.decided = "refused", cmp.Or(problem.Problem.Detail, problem.Problem.Title), now
	case ctx.Err() != nil && o.kind == "queued":
		// Given up at the test's end while queued.
	default:
		o.err = err
	}
	o.mu.Unlock()
	signal()
}

// scaleEnv is the devgpu server of the scale test, with a kube backend
// on the kwok cluster.
type scaleEnv struct {
	*env
}

func newScaleEnv(t *testing.T, c *kwokcluster.Cluster) *scaleEnv {
	t.Helper()
	// Beyond loopback, --dev serves TLS with its own CA, which the link
	// needs (https) and the agents trust through the Pods' Secrets.
	e := &env{t: t, bin: testutil.Binary(t), dir: testutil.ShortTempDir(t), addr: net.JoinHostPort(hostIP(t), "0")}
	ln, err := net.Listen("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	ln.Close()
	kube := map[string]any{
		"kubeconfig":  c.Kubeconfig,
		"namespace":   kwokcluster.Namespace,
		"gpu_types":   map[string]string{kwokcluster.Product: scaleType},
		"agent_image": "devgpu.local/agent:kwok", // never pulled: kwok runs no container
		"image":       "devgpu.local/session:kwok",
		"link_url":    "https://" + e.addr,
	}
	cfg, err := json.Marshal(map[string]any{
		"backends": []map[string]any{{"name": scaleBackend, "runtime": "kube", "kube": kube}},
		// The 100 users and the 430 agents all come from this host's one
		// address here, not from theirs: let them all in.
		"max_conns_per_address": 4 * scaleUsers * scaleRequests,
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.dir, "server.json")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	e.args = []string{"--dev", "--data", filepath.Join(e.dir, "data"), "--listen", e.addr, "--config", path, "--log-level", "info"}
	e.startServerWith(e.args)
	t.Cleanup(func() {
		e.stopServer(syscall.SIGTERM)
		if t.Failed() {
			log := e.log.String()
			if len(log) > 200_000 {
				log = "...\n" + log[len(log)-200_000:]
			}
			t.Logf("server log:\n%s", log)
		}
	})
	return &scaleEnv{e}
}

// cliConfig is the CLI config --dev wrote for the admin.
func (e *scaleEnv) cliConfig(t *testing.T) (url, token, caFile string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		URL    string `json:"url"`
		Token  string `json:"token"`
		CAFile string `json:"ca_file"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.URL == "" || c.Token == "" || c.CAFile == "" {
		t.Fatalf("the admin's CLI config lacks url, token or ca_file: %s", b)
	}
	return c.URL, c.Token, c.CAFile
}

func (e *scaleEnv) adminToken(t *testing.T) string { _, tok, _ := e.cliConfig(t); return tok }
func (e *scaleEnv) caFile(t *testing.T) string     { _, _, ca := e.cliConfig(t); return ca }

// sdkClient is a client for the server with token, keeping enough
// connections open for the burst.
func (e *scaleEnv) sdkClient(t *testing.T, token string) *sdk.Client {
	t.Helper()
	url, _, ca := e.cliConfig(t)
	c, err := sdk.NewClient(url, token)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.TrustCAFile(ca); err != nil {
		t.Fatal(err)
	}
	return c
}

// hostIP is this host's address beyond loopback (the one its default
// route leaves from).
func hostIP(t *testing.T) string {
	t.Helper()
	conn, err := net.Dial("udp", "192.0.2.1:9") // sends nothing: only picks the source address
	if err != nil {
		t.Skipf("the scale test needs an address beyond loopback for the server's TLS (--dev serves plain HTTP on loopback): %v", err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.String()
}

// setUpScale makes the projects, their users and the org quota, and
// returns each user's token.
func setUpScale(t *testing.T, admin *sdk.Client, projects []scaleProject) map[string]string {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitLong)
	if _, err := admin.UpdateOrgPolicy(ctx, func(p sdk.OrgPolicy) (sdk.OrgPolicy, error) {
		p.Quotas = []sdk.Quota{{GPUType: scaleType, Region: scaleWest, Max: scaleWestQuota}}
		return p, nil
	}); err != nil {
		t.Fatal(err)
	}
	tokens := map[string]string{}
	dedicated := sdk.ModeDedicated
	for i, p := range projects {
		// Nobody attaches to these sessions: keep them past the test
		// rather than ending them detached after the default grace.
		grace := sdk.Duration(scaleWait)
		settings := sdk.ProjectSettings{ShellMode: &dedicated, DetachGrace: &grace}
		if p.maxGPUs > 0 {
			settings.MaxGPUs = &p.maxGPUs
		}
		if p.maxGPUsPerUser > 0 {
			settings.MaxGPUsPerUser = &p.maxGPUsPerUser
		}
		if _, err := admin.CreateProject(ctx, sdk.ProjectCreate{Name: p.name, Settings: settings}); err != nil {
			t.Fatal(err)
		}
		for u := i * scaleUsersPerPrj; u < (i+1)*scaleUsersPerPrj; u++ {
			name := fmt.Sprintf("u%03d", u)
			created, err := admin.CreateUser(ctx, sdk.UserCreate{Name: name})
			if err != nil {
				t.Fatal(err)
			}
			tokens[name] = created.Token
			if _, err := admin.SetMember(ctx, p.name, name, "developer"); err != nil {
				t.Fatal(err)
			}
		}
	}
	return tokens
}

// wantPools fails unless the server offers exactly these a100s per region.
func wantPools(t *testing.T, admin *sdk.Client, want map[string]int) {
	t.Helper()
	testutil.Eventually(t, testutil.WaitMedium, fmt.Sprintf("the server to offer a100s %v", want), func() bool {
		pools, err := admin.GPUs(context.Background())
		if err != nil {
			return false
		}
		got := map[string]int{}
		for _, p := range pools {
			if p.Type == scaleType {
				got[p.Region] += p.Total
			}
		}
		return len(got) == len(want) && got[scaleWest] == want[scaleWest] && got[scaleEast] == want[scaleEast]
	})
}

// waitPool waits until the server offers total a100s in region and
// returns how long after since that was.
func waitPool(t *testing.T, admin *sdk.Client, region string, total int, since time.Time) time.Duration {
	t.Helper()
	var at time.Time
	testutil.Eventually(t, testutil.WaitMedium, fmt.Sprintf("the server to offer %d a100s in %s", total, region), func() bool {
		pools, err := admin.GPUs(context.Background())
		if err != nil {
			return false
		}
		for _, p := range pools {
			if p.Type == scaleType && p.Region == region && p.Total == total {
				at = time.Now()
				return true
			}
		}
		return false
	})
	return at.Sub(since)
}

// holdings are the GPUs that sessions hold (starting, running or
// stopping), per region, project and user in a project; and the queued
// and running sessions per region.
type holdings struct {
	region, project, user map[string]int
	queued, running       map[string]int
}

// holds reports whether a session in state holds its GPU.
func holds(state string) bool {
	return state == sdk.StateStarting || state == sdk.StateRunning || state == sdk.StateStopping
}

func held(t *testing.T, admin *sdk.Client) holdings {
	t.Helper()
	all, err := admin.Sessions(context.Background(), sdk.SessionQuery{AllUsers: true, ActiveOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	return count(all)
}

func count(all []sdk.Session) holdings {
	h := holdings{region: map[string]int{}, project: map[string]int{}, user: map[string]int{}, queued: map[string]int{}, running: map[string]int{}}
	for _, s := range all {
		switch {
		case s.State == sdk.StateQueued:
			h.queued[s.Region]++
		case holds(s.State):
			n := max(len(s.GPUs), 1) // a starting session holds its GPU before the engine names it
			h.region[s.Region] += n
			h.project[s.Project] += n
			h.user[s.Project+"/"+s.User] += n
			if s.State == sdk.StateRunning {
				h.running[s.Region]++
			}
		}
	}
	return h
}

// sampler checks the invariants over and over while the test runs: GPUs
// held per region within the quota and what the region may hold, per
// project and per user within their caps, and Pods per node within its
// GPUs.
type sampler struct {
	mu       sync.Mutex
	n        int
	problems []string
	maxHeld  map[string]int
	// regionMax is what each region may hold; nodeMax each node's GPUs
	// (scaleGPUsPerNode unless listed).
	regionMax, nodeMax map[string]int
	done, stopped      chan struct{}
	stopOnce           sync.Once
}

func startSampler(t *testing.T, admin *sdk.Client, c *kwokcluster.Cluster, projects []scaleProject) *sampler {
	s := &sampler{maxHeld: map[string]int{}, done: make(chan struct{}), stopped: make(chan struct{}),
		regionMax: map[string]int{scaleWest: scaleWestQuota, scaleEast: scaleEastCapacity}, nodeMax: map[string]int{}}
	limit := map[string]scaleProject{}
	for _, p := range projects {
		limit[p.name] = p
	}
	go func() {
		defer close(s.stopped)
		tick := time.NewTicker(scaleSampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-tick.C:
			}
			// Each observation is held to the limits read after it: a
			// change is allowed before it happens and only raises them,
			// so limits read before an observation could be lower than
			// what was in force when it was made (a capacity growth
			// during the sample).
			limits := func() (regionMax, nodeMax map[string]int) {
				s.mu.Lock()
				defer s.mu.Unlock()
				return maps.Clone(s.regionMax), maps.Clone(s.nodeMax)
			}
			var problems []string
			all, err := admin.Sessions(context.Background(), sdk.SessionQuery{AllUsers: true, ActiveOnly: true})
			if err != nil {
				problems = append(problems, "list sessions: "+err.Error())
			}
			regionMax, _ := limits()
			h := count(all)
			for r, n := range h.region {
				if n > regionMax[r] {
					problems = append(problems, fmt.Sprintf("%d a100s held in %s, over the %d it may hold (quota or capacity)", n, r, regionMax[r]))
				}
			}
			for name, n := range h.project {
				if p := limit[name]; p.maxGPUs > 0 && n > p.maxGPUs {
					problems = append(problems, fmt.Sprintf("project %s holds %d GPUs, over its cap of %d", name, n, p.maxGPUs))
				}
			}
			for key, n := range h.user {
				if p := limit[strings.SplitN(key, "/", 2)[0]]; p.maxGPUsPerUser > 0 && n > p.maxGPUsPerUser {
					problems = append(problems, fmt.Sprintf("user %s holds %d GPUs, over the per-user cap of %d", key, n, p.maxGPUsPerUser))
				}
			}
			// The cluster's side: the Pods bound to each node fit its GPUs.
			pods, err := c.Client.CoreV1().Pods(kwokcluster.Namespace).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				problems = append(problems, "list Pods: "+err.Error())
			} else {
				_, nodeMax := limits()
				perNode := map[string]int{}
				for _, p := range pods.Items {
					if p.Spec.NodeName != "" && p.DeletionTimestamp == nil {
						perNode[p.Spec.NodeName]++
					}
				}
				for node, n := range perNode {
					if most := cmp.Or(nodeMax[node], scaleGPUsPerNode); n > most {
						problems = append(problems, fmt.Sprintf("node %s runs %d one-GPU Pods, over its %d GPUs", node, n, most))
					}
				}
			}
			s.mu.Lock()
			s.n++
			s.problems = append(s.problems, problems...)
			for r, n := range h.region {
				s.maxHeld[r] = max(s.maxHeld[r], n)
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// allow raises what region may hold and node's GPUs, before the capacity
// change that makes them so.
func (s *sampler) allow(region string, held int, node string, gpus int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.regionMax[region] = held
	s.nodeMax[node] = gpus
}

func (s *sampler) stop() {
	s.stopOnce.Do(func() { close(s.done) })
	<-s.stopped
}

// check fails the test with what the samples found exceeded.
func (s *sampler) check(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		t.Fatal("the invariants were never sampled")
	}
	for i, p := range s.problems {
		if i == 20 {
			t.Errorf("... and %d more", len(s.problems)-i)
			break
		}
		t.Error(p)
	}
	t.Logf("invariants held over %d samples; most GPUs held at once: %v", s.n, s.maxHeld)
}

// queuePosition is the start of a queued request's reason that says how
// many requests are ahead of it.
var queuePosition = regexp.MustCompile(`^\d+ requests? ahead of yours; `)

// pct is the p-th percentile of ds (100: the largest).
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)].Round(time.Millisecond)
}

// agents plays the agents of the sessions' Pods: kwok marks a placed Pod
// Running but runs none of its containers, so for each such Pod the test
// does what its agent would: read the Secret mounted into it, link to the
// URL its command names with the credential, report its node and a GPU,
// and serve a real agent on the link.
type agents struct {
	mu     sync.Mutex
	linked map[string]context.CancelFunc // by Pod name
	wg     sync.WaitGroup
	stopCh chan struct{}
	once   sync.Once
}

func playAgents(ctx context.Context, t *testing.T, c *kwokcluster.Cluster, caFile string) *agents {
	t.Helper()
	a := &agents{linked: map[string]context.CancelFunc{}, stopCh: make(chan struct{})}
	factory := informers.NewSharedInformerFactoryWithOptions(c.Client, 0, informers.WithNamespace(kwokcluster.Namespace))
	pods := factory.Core().V1().Pods().Informer()
	onPod := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Spec.NodeName == "" || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			return
		}
		a.link(ctx, t, c, p)
	}
	_, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onPod,
		UpdateFunc: func(_, obj any) { onPod(obj) },
		DeleteFunc: func(obj any) {
			if p, ok := obj.(*corev1.Pod); ok {
				a.unlink(p.Name)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(a.stopCh)
	if !cache.WaitForCacheSync(a.stopCh, pods.HasSynced) {
		t.Fatal("the agents' Pod informer did not sync")
	}
	return a
}

func (a *agents) link(ctx context.Context, t *testing.T, c *kwokcluster.Cluster, p *corev1.Pod) {
	a.mu.Lock()
	if _, ok := a.linked[p.Name]; ok {
		a.mu.Unlock()
		return
	}
	lctx, cancel := context.WithCancel(ctx)
	a.linked[p.Name] = cancel
	a.mu.Unlock()
	a.wg.Go(func() {
		defer cancel()
		if err := serveAgent(lctx, c, p); err != nil && lctx.Err() == nil {
			t.Errorf("agent of Pod %s: %v", p.Name, err)
		}
	})
}

func (a *agents) unlink(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cancel, ok := a.linked[name]; ok {
		cancel()
	}
}

func (a *agents) stop() {
	a.once.Do(func() {
		close(a.stopCh)
		a.mu.Lock()
		for _, cancel := range a.linked {
			cancel()
		}
		a.mu.Unlock()
	})
	a.wg.Wait()
}

// serveAgent is one Pod's agent: what `devgpu agent --link` does with
// the Pod's command line and the files of its Secret.
func serveAgent(ctx context.Context, c *kwokcluster.Cluster, p *corev1.Pod) error {
	var args []string
	for _, ctr := range p.Spec.Containers {
		args = append(args, ctr.Command...)
		args = append(args, ctr.Args...)
	}
	session, linkURL := flagValue(args, "--session"), flagValue(args, "--link")
	if session == "" || linkURL == "" {
		return fmt.Errorf("its command %q names no --session and --link", args)
	}
	secret, err := c.Client.CoreV1().Secrets(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read its Secret: %w", err)
	}
	cred, agentSecret, ca := secret.Data[runtime.AgentCredentialFile], secret.Data[runtime.AgentSecretFile], secret.Data[runtime.AgentCAFile]
	if len(cred) == 0 || len(agentSecret) == 0 || len(ca) == 0 {
		return fmt.Errorf("its Secret lacks %s, %s or %s (keys: %v)", runtime.AgentCredentialFile, runtime.AgentSecretFile, runtime.AgentCAFile, keys(secret.Data))
	}
	for _, ctr := range p.Spec.Containers {
		for _, v := range ctr.Env {
			if strings.Contains(v.Value, string(cred)) || strings.Contains(v.Value, string(agentSecret)) {
				return fmt.Errorf("container %s's env %s holds a credential", ctr.Name, v.Name)
			}
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return errors.New("its Secret's " + runtime.AgentCAFile + " holds no certificate")
	}
	ln := link.Listen(ctx, link.AgentConfig{
		URL: linkURL, SessionID: session, Credential: strings.TrimSpace(string(cred)),
		TLS:    &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		Report: link.Report{Node: p.Spec.NodeName, Devices: []string{"GPU-kwok-" + session}},
	})
	err = agent.Serve(ctx, ln, agent.Config{Secret: strings.TrimSpace(string(agentSecret)), Dir: os.TempDir(), Devices: []string{"GPU-kwok-" + session}})
	if errors.Is(err, link.ErrStopped) || errors.Is(err, net.ErrClosed) {
		return nil // the session was stopped: its agent exits
	}
	return err
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

func keys(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
