//go:build linux && !agentonly

// Package aca runs sessions on Azure Container Apps serverless GPUs, in
// the customer's own subscription: the platform chooses the GPU.
//
// # A session
//
// Each session is a Container Apps job (Microsoft.App/jobs) in
// Config.ResourceGroup, in the managed environment Config.Environment, on
// the GPU workload profile that Config.GPUTypes maps the session's GPU type
// to. The job is started by hand (triggerType Manual), runs one replica
// (parallelism 1, replicaCompletionCount 1) that is never retried
// (replicaRetryLimit 0), and is bounded by Config.ReplicaTimeout. Start
// creates it, starts one execution and returns when the agent inside has
// linked; Stop stops the execution and deletes the job.
//
// Why a job and not a container app: the platform restarts an app's
// container whenever it exits, so an agent's exit (its idle exit after the
// control plane vanished, or a detached run's end) would never end the
// session. A job's execution ends with its process (Succeeded or Failed),
// and replicaTimeout bounds what a session costs even when no control
// plane is left to stop it.
//
// # The network path
//
// Nothing dials the job: it has no ingress. The agent dials out to the
// control plane's link endpoint (Config.LinkURL, a WebSocket over HTTPS,
// internal/link) with a credential minted for its session alone, and
// Connect opens streams over that link. The customer allows outbound
// traffic from the environment's subnet to the link's address and port.
// Container Apps has no egress rule per job: what a session may reach is
// what the environment's network enforces (Config.Egress declares it), and
// a session whose project asks for stricter is refused at Start.
//
// # The image
//
// The session runs the user's image with one layer appended, the static
// agent at /devgpu-agent (agentimage.AgentLayer), pushed to the customer's
// registry (Config.Registry, Config.Repository) under a tag made of the
// base image's digest and the agent layer's, so that a second session of
// one base pushes nothing. The control plane pushes with its own Azure
// identity through ACR's token exchange; jobs pull with
// Config.RegistryIdentity.
//
// # Secrets
//
// The agent's secret, its link credential and the CA it trusts for the
// link are job secrets, mounted as files of a Secret volume at
// /var/run/devgpu; never in the container's environment or arguments. ARM
// does not return secrets' values when a job is read.
//
// # Ownership
//
// Every job carries the tags devgpu-installation, devgpu-backend,
// devgpu-session, devgpu-user and devgpu-project. List, Stop and Connect
// touch only jobs whose installation and backend tags are this runtime's:
// a second installation (or backend) in the same resource group is never
// touched. A job whose execution ended (Succeeded, Failed or Stopped: the
// agent exited, the replica was lost or timed out) leaves List; the
// control plane then ends its session. A job whose execution ended and
// that no start or known session holds is deleted by the runtime's own
// sweep endedGrace after its end, so that such jobs never pile up.
//
// # Workspaces
//
// The aca runtime mounts no workspace: Spec.Workspace is ignored (an
// Azure Files volume is not built), and a session's files live as long as
// its execution.
//
// # Capacity
//
// With QuotaFromAzure the runtime re-reads the GPU quota every
// refreshEvery, from the environment's usages and the subscription's
// usages in the environment's location, takes the smaller limit, and
// signals CapacityChanged when it changes.
package aca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/appcontainers/armappcontainers/v3"

	"github.com/devgpu/devgpu/internal/runtime"
)

var (
	_ runtime.Runtime         = (*Runtime)(nil)
	_ runtime.CapacityWatcher = (*Runtime)(nil)
)

// Waits that the runtime bounds itself, whatever its caller's context.
const (
	// stopWait bounds how long Stop waits for Azure to delete the job.
	stopWait = 2 * time.Minute
	// relinkWait bounds how long Connect waits for the agent of a running
	// execution to link again, as it does after a control plane restart.
	relinkWait = 15 * time.Second
	// cleanupWait bounds the removal of a session whose start failed.
	cleanupWait = 2 * time.Minute
	// pushWait bounds New's upload of the agent's layer, which runs in the
	// background: the first Start pushes it again if it did not finish.
	pushWait = 2 * time.Minute
	// readWait bounds one read of a starting execution's status.
	readWait = 30 * time.Second
	// refreshEvery is how often the runtime re-reads the quota (with
	// QuotaFromAzure) and sweeps ended jobs.
	refreshEvery = 3 * time.Minute
	// endedGrace is how long after its execution ended a job no session
	// holds is kept before the sweep deletes it.
	endedGrace = 10 * time.Minute
)

// pollEvery is how often the runtime polls Azure's long-running operations
// (absent a Retry-After). azcore's minimum outside tests is one second.
// awaitEvery is how often a start polls its execution's status while it
// waits for the agent (the link itself is waited for without polling);
// the first poll comes after pollEvery.
var (
	pollEvery  = time.Second
	awaitEvery = 5 * time.Second
)

// Runtime runs sessions as Container Apps jobs in one managed environment.
type Runtime struct {
	cfg       *checked
	log       *slog.Logger
	jobs      *armappcontainers.JobsClient
	execs     *armappcontainers.JobsExecutionsClient
	api       *armappcontainers.ContainerAppsAPIClient
	envs      *armappcontainers.ManagedEnvironmentsClient
	usages    *armappcontainers.ManagedEnvironmentUsagesClient
	subUsages *armappcontainers.UsagesClient
	images    *images

	// bg is cancelled by Close, which waits for wg: the runtime's own
	// goroutines (the agent layer's upload, the refresh).
	bg      context.Context
	closeBg context.CancelFunc
	wg      sync.WaitGroup
	changed chan struct{}

	mu       sync.Mutex
	capacity []runtime.Capacity
	known    map[string]*session // session id -> its job, known to be this runtime's
	starting map[string]bool     // session ids whose Start is in flight
	stops    uint64              // Stops so far: Connect and List remember only if none ran meanwhile
	noSub    bool                // the subscription's usages were not found (logged once)
}

// session is what the runtime knows of a session it started or listed.
type session struct {
	job       string
	execution string
	started   time.Time
	report    *reportAt // what its agent reported, once it linked
}

// reportAt is what a session's agent reported, for List.
type reportAt struct {
	node    string
	devices []string
}

// New builds the ARM clients, checks the environment (that it exists, that
// the runtime may read it, that every profile GPUTypes names is a GPU
// profile in it, that it has the Consumption profile), takes the region
// from its location when Config.Region is "", and reads the quota usages
// when QuotaFromAzure is set. It starts the upload of the agent's layer
// and the refresh in the background; Close ends both.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	c, err := check(cfg)
	if err != nil {
		return nil, err
	}
	f, err := armappcontainers.NewClientFactory(c.SubscriptionID, c.Credential, c.ClientOptions)
	if err != nil {
		return nil, fmt.Errorf("aca backend %s: make the Azure clients: %w", c.Backend, err)
	}
	r := &Runtime{
		cfg:       c,
		log:       c.Logger.With("backend", c.Backend),
		jobs:      f.NewJobsClient(),
		execs:     f.NewJobsExecutionsClient(),
		api:       f.NewContainerAppsAPIClient(),
		envs:      f.NewManagedEnvironmentsClient(),
		usages:    f.NewManagedEnvironmentUsagesClient(),
		subUsages: f.NewUsagesClient(),
		images:    newImages(c),
		changed:   make(chan struct{}, 1),
		known:     map[string]*session{},
		starting:  map[string]bool{},
	}
	// The agent's layer is compressed once now (tens of megabytes): a
	// missing or unusable agent binary fails here, and the first session
	// does not wait for it.
	if _, _, err := r.images.agentLayer(); err != nil {
		return nil, err
	}
	if err := r.preflight(ctx); err != nil {
		return nil, err
	}
	r.bg, r.closeBg = context.WithCancel(context.Background())
	// The agent's layer goes to the registry now, in the background and
	// bounded, so that the server's start does not wait for the registry
	// and the first session does not wait for the upload; if it fails,
	// the first start pushes it.
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		pctx, cancel := context.WithTimeout(r.bg, pushWait)
		defer cancel()
		if err := r.images.pushLayer(pctx); err != nil && r.bg.Err() == nil {
			r.log.Warn("push the agent's layer to the registry ahead of the first session; the first start pushes it", "err", err)
		}
	}()
	go func() {
		defer r.wg.Done()
		r.refresh(r.bg, refreshEvery)
	}()
	return r, nil
}

// preflight reads the environment once, so that a missing environment or
// permission is one clear error now rather than at each session's start.
func (r *Runtime) preflight(ctx context.Context) error {
	c := r.cfg
	env, err := r.envs.Get(ctx, c.ResourceGroup, c.Environment, nil)
	switch {
	case notFound(err):
		return fmt.Errorf("aca backend %s: managed environment %s not found in resource group %s of subscription %s; create it (README: the Azure set-up) or fix aca.environment", c.Backend, c.Environment, c.ResourceGroup, c.SubscriptionID)
	case err != nil:
		return r.azureErr("read managed environment "+c.Environment, err)
	}
	if env.ID != nil {
		c.environmentID = *env.ID
	} else {
		c.environmentID = fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.App/managedEnvironments/%s", c.SubscriptionID, c.ResourceGroup, c.Environment)
	}
	location := ""
	if env.Location != nil {
		// ARM reports a location as its name ("swedencentral") or, from
		// some providers, its display name ("Sweden Central").
		location = strings.ToLower(strings.ReplaceAll(*env.Location, " ", ""))
	}
	c.location = location
	if c.Region == "" {
		c.region = location
		if c.region == "" {
			return fmt.Errorf("aca backend %s: managed environment %s reports no location; set aca.region", c.Backend, c.Environment)
		}
	} else {
		c.region = c.Region
	}
	profiles := map[string]string{}
	if env.Properties != nil {
		for _, p := range env.Properties.WorkloadProfiles {
			if p != nil && p.Name != nil && p.WorkloadProfileType != nil {
				profiles[*p.Name] = *p.WorkloadProfileType
			}
		}
	}
	// Sessions without a GPU run on the Consumption profile, which every
	// workload profiles environment has
	// (https://learn.microsoft.com/azure/container-apps/workload-profiles-overview);
	// a Consumption-only (v1) environment has no profiles at all.
	if _, ok := profiles[consumption]; !ok {
		return fmt.Errorf("aca backend %s: managed environment %s has no %s workload profile, which sessions without a GPU run on; use a workload profiles environment", c.Backend, c.Environment, consumption)
	}
	c.profileTypes = map[string]string{}
	for typ, name := range c.GPUTypes {
		pt, ok := profiles[name]
		switch {
		case !ok:
			return fmt.Errorf("aca backend %s: managed environment %s has no workload profile %s (aca.gpu_types.%s); add a GPU workload profile of that name to it, or map %s to one it has", c.Backend, c.Environment, name, typ, typ)
		case !gpuProfileType(pt):
			return fmt.Errorf("aca backend %s: workload profile %s (aca.gpu_types.%s) of managed environment %s is of type %s, which has no GPU; map %s to a profile of type Consumption-GPU-NC8as-T4 or Consumption-GPU-NC24-A100", c.Backend, name, typ, c.Environment, pt, typ)
		}
		if _, known := gpuProfiles[pt]; !known {
			if _, set := c.Resources[typ]; !set {
				return fmt.Errorf("aca backend %s: workload profile %s is of type %s, whose replica size devgpu does not know; set aca.resources.%s (cpu and memory)", c.Backend, name, pt, typ)
			}
		}
		c.profileTypes[name] = pt
	}
	quota, err := r.quota(ctx)
	if err != nil {
		return err
	}
	r.capacity = r.capacityOf(quota)
	return nil
}

// capacityOf is the runtime's Capacity for a quota: Total is the limit,
// the GPUs the backend offers in all, those in use included.
func (r *Runtime) capacityOf(quota map[string]int) []runtime.Capacity {
	var out []runtime.Capacity
	for _, typ := range sortedKeys(r.cfg.GPUTypes) {
		out = append(out, runtime.Capacity{Type: typ, Region: r.cfg.region, Total: quota[typ]})
	}
	return out
}

// quota is how many GPUs of each type the backend may run: Config.Quota,
// and for the types it leaves out the smaller of the environment's and
// the subscription's (in the environment's location) GPU quota. Container
// Apps puts quotas on both scopes
// (https://learn.microsoft.com/azure/container-apps/quotas: "quotas can
// apply to a subscription and region, a managed environment, or an
// application"); the serverless GPU quotas are requested per subscription
// and per environment
// (https://learn.microsoft.com/azure/container-apps/gpu-serverless-overview#request-serverless-gpu-quota).
func (r *Runtime) quota(ctx context.Context) (map[string]int, error) {
	c := r.cfg
	out := map[string]int{}
	var missing []string
	for typ := range c.GPUTypes {
		if n, ok := c.Quota[typ]; ok {
			out[typ] = n
		} else {
			missing = append(missing, typ)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	var usages []*armappcontainers.Usage
	pager := r.usages.NewListPager(c.ResourceGroup, c.Environment, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, r.azureErr("read the quota usages of managed environment "+c.Environment, err)
		}
		usages = append(usages, page.Value...)
	}
	sub, err := r.subscriptionUsages(ctx)
	if err != nil {
		return nil, err
	}
	for _, typ := range missing {
		pt := c.profileTypes[c.GPUTypes[typ]]
		u := usageFor(usages, pt)
		if u == nil || u.Limit == nil {
			return nil, fmt.Errorf("aca backend %s: managed environment %s reports no GPU quota for GPU type %s (workload profile type %s); set aca.quota.%s", c.Backend, c.Environment, typ, pt, typ)
		}
		out[typ] = int(*u.Limit)
		if s := usageFor(sub, pt); s != nil && s.Limit != nil && int(*s.Limit) < out[typ] {
			out[typ] = int(*s.Limit)
		}
	}
	return out, nil
}

// subscriptionUsages are the subscription's Container Apps usages in the
// environment's location (UsagesClient.NewListPager:
// GET /subscriptions/{sub}/providers/Microsoft.App/locations/{location}/usages,
// specification/app/resource-manager/Microsoft.App/stable/2025-01-01/Usages.json).
// A 404 (a location or an API version that does not serve them) is no
// subscription limit known, logged once, not a failure.
func (r *Runtime) subscriptionUsages(ctx context.Context) ([]*armappcontainers.Usage, error) {
	c := r.cfg
	if c.location == "" {
		return nil, nil
	}
	var out []*armappcontainers.Usage
	pager := r.subUsages.NewListPager(c.location, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		// Not served there, or not readable by an identity with rights on
		// the resource group only: the environment's quota still bounds
		// the capacity, so neither stops the backend.
		if notFound(err) || forbidden(err) {
			r.mu.Lock()
			logged := r.noSub
			r.noSub = true
			r.mu.Unlock()
			if !logged {
				r.log.Info("the subscription's Container Apps usages could not be read in the environment's location; only the environment's GPU quota bounds the capacity (give the control plane's identity Reader on the subscription to use both)", "location", c.location, "err", err)
			}
			return nil, nil
		}
		if err != nil {
			return nil, r.azureErr("read the subscription's quota usages in "+c.location, err)
		}
		out = append(out, page.Value...)
	}
	return out, nil
}

// usageFor finds a GPU quota usage of a workload profile type. The
// environment's usages (ManagedEnvironmentUsages_List) and the
// subscription's (Usages_List) name each quota by a name whose value and
// localized value carry the GPU's model: the quotas page
// (https://learn.microsoft.com/azure/container-apps/quotas) names them
// like "Managed Environment Consumption T4 GPUs" and "Subscription
// Consumption T4 GPUs". The exact strings were not confirmed against a
// stored copy of that page, so the match is on the model ("T4", "A100")
// and "Gpu".
func usageFor(usages []*armappcontainers.Usage, profileType string) *armappcontainers.Usage {
	model := profileType[strings.LastIndex(profileType, "-")+1:]
	for _, u := range usages {
		if u == nil || u.Name == nil {
			continue
		}
		for _, n := range []*string{u.Name.Value, u.Name.LocalizedValue} {
			if n == nil {
				continue
			}
			l := strings.ToLower(*n)
			if strings.Contains(l, strings.ToLower(model)) && strings.Contains(l, "gpu") {
				return u
			}
		}
	}
	return nil
}

// Name is "aca".
func (r *Runtime) Name() string { return "aca" }

// Capacity is the quota of each GPU type, in the backend's region, as New
// or the last refresh read it: the GPUs offered in all, those in use
// included.
func (r *Runtime) Capacity(context.Context) ([]runtime.Capacity, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]runtime.Capacity(nil), r.capacity...), nil
}

// CapacityChanged receives after a refresh found a new quota.
func (r *Runtime) CapacityChanged() <-chan struct{} { return r.changed }

// Close ends the runtime's own goroutines (the agent layer's upload, the
// refresh) and waits for them. Sessions keep running.
func (r *Runtime) Close() {
	r.closeBg()
	r.wg.Wait()
}

// refresh re-reads the quota (with QuotaFromAzure) and sweeps ended jobs
// every period, until ctx ends.
func (r *Runtime) refresh(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.cfg.QuotaFromAzure {
			r.refreshQuota(ctx)
		}
		r.sweep(ctx, time.Now())
	}
}

// refreshQuota reads the quota again and signals CapacityChanged when it
// differs from what Capacity reports.
func (r *Runtime) refreshQuota(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, readWait)
	defer cancel()
	quota, err := r.quota(qctx)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("re-read the GPU quota; keeping the last one read", "err", err)
		}
		return
	}
	next := r.capacityOf(quota)
	r.mu.Lock()
	same := len(next) == len(r.capacity)
	for i := 0; same && i < len(next); i++ {
		same = next[i] == r.capacity[i]
	}
	r.capacity = next
	r.mu.Unlock()
	if same {
		return
	}
	r.log.Info("GPU quota changed", "capacity", fmt.Sprint(next))
	select {
	case r.changed <- struct{}{}:
	default: // a change not yet read is signalled already
	}
}

// sweep deletes this runtime's jobs whose executions all ended more than
// endedGrace before now and that no Start or known session holds: a
// session the control plane forgot (it ended while the control plane was
// down) or a start that a crash interrupted.
func (r *Runtime) sweep(ctx context.Context, now time.Time) {
	lctx, cancel := context.WithTimeout(ctx, stopWait)
	defer cancel()
	pager := r.jobs.NewListByResourceGroupPager(r.cfg.ResourceGroup, nil)
	for pager.More() {
		page, err := pager.NextPage(lctx)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("sweep ended jobs: list the jobs of the resource group", "err", r.azureErr("list the jobs of resource group "+r.cfg.ResourceGroup, err))
			}
			return
		}
		for _, j := range page.Value {
			id, ok := r.ownedSession(j)
			if !ok || r.held(id) {
				continue
			}
			execs, err := r.executions(lctx, *j.Name)
			if err != nil {
				continue // deleted meanwhile, or listed at the next sweep
			}
			if _, live := liveExecution(execs); live {
				continue
			}
			ended := created(j)
			for _, e := range execs {
				if e.ended.After(ended) {
					ended = e.ended
				}
			}
			if ended.IsZero() || now.Sub(ended) < endedGrace || r.held(id) {
				continue
			}
			r.log.Info("deleting a session job whose execution ended and that no session holds", "session_id", id, "job", *j.Name, "ended", ended)
			if err := r.remove(lctx, id, false); err != nil && ctx.Err() == nil {
				r.log.Warn("delete an ended session job", "session_id", id, "err", err)
			}
		}
	}
}

// held reports whether a Start of the session is in flight or the runtime
// knows the session (the control plane stops it).
func (r *Runtime) held(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, known := r.known[id]
	return known || r.starting[id]
}

// ownedSession is the session of a job this runtime owns.
func (r *Runtime) ownedSession(j *armappcontainers.Job) (string, bool) {
	if j == nil || j.Name == nil || !r.cfg.owned(j.Tags) {
		return "", false
	}
	id := tag(j.Tags, tagSession)
	if id == "" || r.cfg.jobName(id) != *j.Name {
		return "", false
	}
	return id, true
}

// created is when a job was created (ARM's systemData.createdAt), zero when
// ARM does not say.
func created(j *armappcontainers.Job) time.Time {
	if j != nil && j.SystemData != nil && j.SystemData.CreatedAt != nil {
		return *j.SystemData.CreatedAt
	}
	return time.Time{}
}

// execution is a job's execution as the runtime needs it.
type execution struct {
	name    string
	status  armappcontainers.JobExecutionRunningState
	started time.Time
	ended   time.Time
}

// live reports whether an execution still counts as a session: every
// status but the ends (Succeeded, Failed, Stopped), so that Degraded,
// Unknown or Processing (JobExecutionRunningState in Jobs.json) stay
// listed, as kube keeps a Pod that is not yet Succeeded or Failed.
func (e execution) live() bool {
	switch e.status {
	case armappcontainers.JobExecutionRunningStateSucceeded,
		armappcontainers.JobExecutionRunningStateFailed,
		armappcontainers.JobExecutionRunningStateStopped:
		return false
	}
	return true
}

// executions lists a job's executions.
func (r *Runtime) executions(ctx context.Context, job string) ([]execution, error) {
	var out []execution
	pager := r.execs.NewListPager(r.cfg.ResourceGroup, job, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, e := range page.Value {
			if x, ok := toExecution(e); ok {
				out = append(out, x)
			}
		}
	}
	return out, nil
}

func toExecution(e *armappcontainers.JobExecution) (execution, bool) {
	if e == nil || e.Name == nil {
		return execution{}, false
	}
	x := execution{name: *e.Name}
	if p := e.Properties; p != nil {
		if p.Status != nil {
			x.status = *p.Status
		}
		if p.StartTime != nil {
			x.started = *p.StartTime
		}
		if p.EndTime != nil {
			x.ended = *p.EndTime
		}
	}
	return x, true
}

// liveExecution is the job's running execution, if it has one.
func liveExecution(execs []execution) (execution, bool) {
	for _, e := range execs {
		if e.live() {
			return e, true
		}
	}
	return execution{}, false
}

// ownedJob gets the session's job, if it exists and is this runtime's.
func (r *Runtime) ownedJob(ctx context.Context, id string) (*armappcontainers.Job, error) {
	name := r.cfg.jobName(id)
	resp, err := r.jobs.Get(ctx, r.cfg.ResourceGroup, name, nil)
	if notFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, r.azureErr("read job "+name+" of session "+id, err)
	}
	if !r.cfg.owned(resp.Tags) || tag(resp.Tags, tagSession) != id {
		return nil, nil
	}
	return &resp.Job, nil
}

// Connect opens a stream to the session's agent over its link, if the
// session's job is this runtime's: the hub may hold the links of other
// backends' sessions too. After a control plane restart the agent of a
// running execution links again within seconds; Connect waits for it
// rather than call the session lost.
func (r *Runtime) Connect(ctx context.Context, id string) (net.Conn, error) {
	if !runtime.ValidID(id) {
		return nil, fmt.Errorf("connect to session %q: %w", id, runtime.ErrNotFound)
	}
	r.mu.Lock()
	_, known := r.known[id]
	stops := r.stops
	r.mu.Unlock()
	if known && r.cfg.Link.Linked(id) {
		return r.cfg.Link.Dial(ctx, id)
	}
	job, err := r.ownedJob(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("connect to session %s: %w", id, err)
	}
	if job == nil {
		return nil, fmt.Errorf("connect to session %s: no job of aca backend %s holds it: %w", id, r.cfg.Backend, runtime.ErrNotFound)
	}
	if !r.cfg.Link.Linked(id) {
		execs, err := r.executions(ctx, r.cfg.jobName(id))
		if err != nil {
			return nil, fmt.Errorf("connect to session %s: %w", id, r.azureErr("list the executions of job "+r.cfg.jobName(id), err))
		}
		e, ok := liveExecution(execs)
		if !ok {
			return nil, fmt.Errorf("connect to session %s: its job's execution ended: %w", id, runtime.ErrNotFound)
		}
		r.remember(id, stops, e.name, startedAt(e, job))
		wctx, cancel := context.WithTimeout(ctx, relinkWait)
		_, err = r.cfg.Link.WaitLinked(wctx, id)
		cancel()
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("connect to session %s: %w", id, ctx.Err())
		}
	} else {
		r.remember(id, stops, "", startedAt(execution{}, job))
	}
	return r.cfg.Link.Dial(ctx, id)
}

// startedAt is when a session started: its execution's start, else its
// job's creation, else now; never zero.
func startedAt(e execution, job *armappcontainers.Job) time.Time {
	if !e.started.IsZero() {
		return e.started
	}
	if t := created(job); !t.IsZero() {
		return t
	}
	return time.Now()
}

// remember records a session the runtime found, unless a Stop ran since
// stops was read (a Stop racing Connect or List must not be undone).
// An execution name or start time already known is kept when "" or zero
// is given.
func (r *Runtime) remember(id string, stops uint64, execName string, started time.Time) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stops != stops {
		return nil
	}
	s := r.known[id]
	if s == nil {
		s = &session{job: r.cfg.jobName(id), started: started}
		r.known[id] = s
	}
	if execName != "" {
		s.execution = execName
	}
	if s.started.IsZero() {
		s.started = started
	}
	return s
}

// Stop ends the session's link, stops its execution and deletes its job
// (only a job that carries this runtime's tags), and waits until Azure has
// deleted it, so that its GPU is free when Stop returns. A missing job is
// not an error.
func (r *Runtime) Stop(ctx context.Context, id string) error {
	if !runtime.ValidID(id) {
		return nil // no such session could have been started
	}
	r.mu.Lock()
	_, known := r.known[id]
	delete(r.known, id)
	r.stops++
	r.mu.Unlock()
	return r.remove(ctx, id, known)
}

// retryable reports whether an ARM error may pass if the request is sent
// again: 409 (another operation on the resource is in progress), 429 and
// 5xx. azcore's retry policy has retried 429 and 5xx already; a stop or a
// delete keeps trying until its wait ends.
func retryable(err error) bool {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	return re.StatusCode == http.StatusConflict || re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500
}

// remove ends the session's link and deletes its job if this runtime owns
// it, within stopWait of ctx. A session whose job is another's keeps its
// link: job names differ by installation and backend, so a job missing
// under this runtime's name says nothing of a link on a shared hub; that
// link is ended only when this runtime knew the session (started or
// listed it). A stop or delete that Azure refuses for now (409, 429, 5xx)
// is tried again, after the executions are listed again, until the wait
// ends.
func (r *Runtime) remove(ctx context.Context, id string, known bool) error {
	name := r.cfg.jobName(id)
	rg := r.cfg.ResourceGroup
	wctx, cancel := context.WithTimeout(ctx, stopWait)
	defer cancel()
	job, err := r.ownedJob(wctx, id)
	if err != nil {
		return fmt.Errorf("stop session %s: %w", id, err)
	}
	if job == nil {
		// Gone already, or never made, or another's.
		if known {
			r.cfg.Link.Forget(id)
		}
		return nil
	}
	r.cfg.Link.Forget(id)
	log := r.log.With("session_id", id, "job", name)
	backoff := pollEvery
	for {
		// Stop the running execution first, so that the process gets its
		// SIGTERM now; the delete then removes the job and its history.
		if execs, err := r.executions(wctx, name); err == nil {
			for _, e := range execs {
				if !e.live() {
					continue
				}
				p, err := r.jobs.BeginStopExecution(wctx, rg, name, e.name, nil)
				if err == nil {
					_, err = p.PollUntilDone(wctx, pollOpts())
				}
				if err != nil && !notFound(err) {
					log.Warn("stop the session's job execution; deleting the job anyway", "execution", e.name, "err", r.azureErr("stop execution "+e.name, err))
				}
			}
		} else if !notFound(err) {
			log.Warn("list the session's job executions; deleting the job anyway", "err", r.azureErr("list the executions of job "+name, err))
		}
		p, err := r.jobs.BeginDelete(wctx, rg, name, nil)
		if err == nil {
			_, err = p.PollUntilDone(wctx, pollOpts())
		}
		if err == nil || notFound(err) {
			log.Info("session job deleted")
			return nil
		}
		if !retryable(err) || wctx.Err() != nil {
			return fmt.Errorf("stop session %s: %w", id, r.azureErr("delete job "+name, err))
		}
		log.Debug("delete the session's job: Azure refused for now; trying again", "err", err)
		select {
		case <-time.After(backoff):
		case <-wctx.Done():
			return fmt.Errorf("stop session %s: %w", id, r.azureErr("delete job "+name, err))
		}
		backoff = min(2*backoff, 15*time.Second)
	}
}

// List returns the sessions whose jobs carry this runtime's tags and have
// an execution that has not ended. A session whose agent is linked and
// whose execution the runtime knows is listed without reading its
// executions: the link is proof its execution lives.
func (r *Runtime) List(ctx context.Context) ([]runtime.Instance, error) {
	var out []runtime.Instance
	r.mu.Lock()
	stops := r.stops
	r.mu.Unlock()
	pager := r.jobs.NewListByResourceGroupPager(r.cfg.ResourceGroup, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, r.azureErr("list the jobs of resource group "+r.cfg.ResourceGroup, err)
		}
		for _, j := range page.Value {
			id, ok := r.ownedSession(j)
			if !ok {
				continue
			}
			var e execution
			if !r.cfg.Link.Linked(id) || r.executionOf(id) == "" {
				execs, err := r.executions(ctx, *j.Name)
				if notFound(err) {
					continue // deleted meanwhile
				}
				if err != nil {
					return nil, r.azureErr("list the executions of job "+*j.Name, err)
				}
				if e, ok = liveExecution(execs); !ok {
					continue
				}
			}
			s := r.remember(id, stops, e.name, startedAt(e, j))
			in := runtime.Instance{SessionID: id, StartedAt: startedAt(e, j)}
			node, devices := r.report(id)
			in.Placement = runtime.Placement{Node: node, Devices: devices, Handle: r.handle(*j.Name, e.name)}
			if s != nil {
				r.mu.Lock()
				in.StartedAt = s.started
				in.Placement.Handle = r.handle(*j.Name, s.execution)
				r.mu.Unlock()
			}
			out = append(out, in)
		}
	}
	return out, nil
}

// executionOf is the name of the session's execution, if the runtime
// knows it.
func (r *Runtime) executionOf(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.known[id]; s != nil {
		return s.execution
	}
	return ""
}

// handle is a session's Placement.Handle: where an operator finds it.
func (r *Runtime) handle(job, execution string) string {
	if execution == "" {
		return r.cfg.ResourceGroup + "/" + job
	}
	return r.cfg.ResourceGroup + "/" + job + "/" + execution
}

// report is the node and GPUs the session's agent reported, if it is
// linked or linked to this runtime since it started.
func (r *Runtime) report(id string) (string, []string) {
	r.mu.Lock()
	if s := r.known[id]; s != nil && s.report != nil {
		rep := *s.report
		r.mu.Unlock()
		return rep.node, rep.devices
	}
	r.mu.Unlock()
	lr, ok := r.cfg.Link.LocalReport(id)
	if !ok {
		return r.cfg.node(), nil
	}
	rep := reportAt{node: r.cfg.node(), devices: lr.Devices}
	if lr.Node != "" {
		rep.node = lr.Node
	}
	r.mu.Lock()
	if s := r.known[id]; s != nil {
		s.report = &rep
	}
	r.mu.Unlock()
	return rep.node, rep.devices
}
