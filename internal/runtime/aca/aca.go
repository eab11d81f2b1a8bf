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
// touched. A job whose execution ended (the agent exited, the replica was
// lost or timed out) leaves List; the control plane then ends its session.
package aca

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/appcontainers/armappcontainers/v3"

	"github.com/devgpu/devgpu/internal/runtime"
)

var _ runtime.Runtime = (*Runtime)(nil)

// Waits that the runtime bounds itself, whatever its caller's context.
const (
	// stopWait bounds how long Stop waits for Azure to delete the job.
	stopWait = 2 * time.Minute
	// relinkWait bounds how long Connect waits for the agent of a running
	// execution to link again, as it does after a control plane restart.
	relinkWait = 15 * time.Second
	// cleanupWait bounds the removal of a session whose start failed.
	cleanupWait = 2 * time.Minute
)

// pollEvery is how often the runtime polls Azure's long-running operations
// (absent a Retry-After) and a starting execution's status. azcore's
// minimum outside tests is one second.
var pollEvery = time.Second

// Runtime runs sessions as Container Apps jobs in one managed environment.
type Runtime struct {
	cfg    *checked
	log    *slog.Logger
	jobs   *armappcontainers.JobsClient
	execs  *armappcontainers.JobsExecutionsClient
	api    *armappcontainers.ContainerAppsAPIClient
	envs   *armappcontainers.ManagedEnvironmentsClient
	usages *armappcontainers.ManagedEnvironmentUsagesClient
	images *images

	capacity []runtime.Capacity

	mu      sync.Mutex
	known   map[string]string // session id -> its job, known to be this runtime's
	reports map[string]reportAt
}

// reportAt is what a session's agent reported, for List.
type reportAt struct {
	node    string
	devices []string
}

// New builds the ARM clients, checks the environment (that it exists, that
// the runtime may read it, that every profile GPUTypes names is a GPU
// profile in it), takes the region from its location when Config.Region is
// "", and reads the quota usages when QuotaFromAzure is set.
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
		cfg:     c,
		log:     c.Logger.With("backend", c.Backend),
		jobs:    f.NewJobsClient(),
		execs:   f.NewJobsExecutionsClient(),
		api:     f.NewContainerAppsAPIClient(),
		envs:    f.NewManagedEnvironmentsClient(),
		usages:  f.NewManagedEnvironmentUsagesClient(),
		images:  newImages(c),
		known:   map[string]string{},
		reports: map[string]reportAt{},
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
	// The agent's layer goes to the registry now, so that the first
	// session does not wait for it; if the registry cannot take it now,
	// the first start pushes it.
	if err := r.images.pushLayer(ctx); err != nil {
		r.log.Warn("push the agent's layer to the registry ahead of the first session", "err", err)
	}
	if c.RegistryIdentity == "system" {
		// Each session's job is new, and so is its system-assigned
		// identity: it holds no AcrPull when the job first pulls.
		// https://learn.microsoft.com/azure/container-apps/managed-identity-image-pull
		// recommends a user-assigned identity "when possible".
		r.log.Warn("aca.registry_identity is \"system\": every session job gets a new system-assigned identity, which has no AcrPull on the registry when it first pulls; use a user-assigned identity with AcrPull")
	}
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
		location = *env.Location
	}
	if c.Region == "" {
		// ARM reports a location as its name ("swedencentral") or, from
		// some providers, its display name ("Sweden Central").
		c.region = strings.ToLower(strings.ReplaceAll(location, " ", ""))
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
	for typ := range c.GPUTypes {
		r.capacity = append(r.capacity, runtime.Capacity{Type: typ, Region: c.region, Total: quota[typ]})
	}
	return nil
}

// quota is how many GPUs of each type the backend may run: Config.Quota,
// and for the types it leaves out the environment's quota usages.
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
	for _, typ := range missing {
		u := usageFor(usages, c.profileTypes[c.GPUTypes[typ]])
		if u == nil || u.Limit == nil {
			return nil, fmt.Errorf("aca backend %s: managed environment %s reports no GPU quota for GPU type %s (workload profile type %s); set aca.quota.%s", c.Backend, c.Environment, typ, c.profileTypes[c.GPUTypes[typ]], typ)
		}
		out[typ] = int(*u.Limit)
	}
	return out, nil
}

// usageFor finds the environment's GPU quota usage of a workload profile
// type. The managed environment usages API
// (specification/app/resource-manager/Microsoft.App/stable/2025-01-01/ManagedEnvironments.json,
// ManagedEnvironmentUsages_List) names each quota by a name whose value
// and localized value carry the GPU's model, such as "Managed Environment
// Consumption T4 Gpus"; the exact value strings were not confirmed, so the
// match is on the model ("T4", "A100") and "Gpu".
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
// read it.
func (r *Runtime) Capacity(context.Context) ([]runtime.Capacity, error) {
	return append([]runtime.Capacity(nil), r.capacity...), nil
}

// Close ends nothing: sessions keep running, and the runtime holds no
// goroutines of its own between calls.
func (r *Runtime) Close() {}

// execution is a job's execution as the runtime needs it.
type execution struct {
	name    string
	status  armappcontainers.JobExecutionRunningState
	started time.Time
}

// live reports whether an execution still counts as a session.
func (e execution) live() bool {
	return e.status == armappcontainers.JobExecutionRunningStateRunning ||
		e.status == armappcontainers.JobExecutionRunningStateProcessing
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
	r.remember(id)
	if !r.cfg.Link.Linked(id) {
		execs, err := r.executions(ctx, r.cfg.jobName(id))
		if err != nil {
			return nil, fmt.Errorf("connect to session %s: %w", id, r.azureErr("list the executions of job "+r.cfg.jobName(id), err))
		}
		if _, ok := liveExecution(execs); ok {
			wctx, cancel := context.WithTimeout(ctx, relinkWait)
			_, err := r.cfg.Link.WaitLinked(wctx, id)
			cancel()
			if err != nil && ctx.Err() != nil {
				return nil, fmt.Errorf("connect to session %s: %w", id, ctx.Err())
			}
		}
	}
	return r.cfg.Link.Dial(ctx, id)
}

func (r *Runtime) remember(id string) {
	r.mu.Lock()
	r.known[id] = r.cfg.jobName(id)
	r.mu.Unlock()
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
	delete(r.reports, id)
	r.mu.Unlock()
	return r.remove(ctx, id, known)
}

// remove ends the session's link and deletes its job if this runtime owns
// it. A session whose job is another's keeps its link: job names differ
// by installation and backend, so a job missing under this runtime's name
// says nothing of a link on a shared hub; that link is ended only when
// this runtime knew the session (started or listed it).
func (r *Runtime) remove(ctx context.Context, id string, known bool) error {
	name := r.cfg.jobName(id)
	rg := r.cfg.ResourceGroup
	job, err := r.ownedJob(ctx, id)
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
	wctx, cancel := context.WithTimeout(ctx, stopWait)
	defer cancel()
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
	if notFound(err) {
		return nil
	}
	if err == nil {
		_, err = p.PollUntilDone(wctx, pollOpts())
	}
	if err != nil && !notFound(err) {
		return fmt.Errorf("stop session %s: %w", id, r.azureErr("delete job "+name, err))
	}
	log.Info("session job deleted")
	return nil
}

// List returns the sessions whose jobs carry this runtime's tags and have
// an execution running now.
func (r *Runtime) List(ctx context.Context) ([]runtime.Instance, error) {
	var out []runtime.Instance
	pager := r.jobs.NewListByResourceGroupPager(r.cfg.ResourceGroup, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, r.azureErr("list the jobs of resource group "+r.cfg.ResourceGroup, err)
		}
		for _, j := range page.Value {
			if j == nil || j.Name == nil || !r.cfg.owned(j.Tags) {
				continue
			}
			id := tag(j.Tags, tagSession)
			if id == "" || r.cfg.jobName(id) != *j.Name {
				continue
			}
			execs, err := r.executions(ctx, *j.Name)
			if notFound(err) {
				continue // deleted meanwhile
			}
			if err != nil {
				return nil, r.azureErr("list the executions of job "+*j.Name, err)
			}
			e, ok := liveExecution(execs)
			if !ok {
				continue
			}
			r.remember(id)
			node, devices := r.report(ctx, id)
			out = append(out, runtime.Instance{
				SessionID: id,
				StartedAt: e.started,
				Placement: runtime.Placement{Node: node, Devices: devices, Handle: r.handle(*j.Name, e.name)},
			})
		}
	}
	return out, nil
}

// handle is a session's Placement.Handle: where an operator finds it.
func (r *Runtime) handle(job, execution string) string {
	return r.cfg.ResourceGroup + "/" + job + "/" + execution
}

// report is the node and GPUs the session's agent reported, if it is
// linked or linked to this runtime since it started.
func (r *Runtime) report(ctx context.Context, id string) (string, []string) {
	r.mu.Lock()
	rep, ok := r.reports[id]
	r.mu.Unlock()
	if ok {
		return rep.node, rep.devices
	}
	if !r.cfg.Link.Linked(id) {
		return r.cfg.node(), nil
	}
	now, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	lr, err := r.cfg.Link.WaitLinked(now, id)
	if err != nil {
		return r.cfg.node(), nil
	}
	rep = reportAt{node: r.cfg.node(), devices: lr.Devices}
	if lr.Node != "" {
		rep.node = lr.Node
	}
	r.mu.Lock()
	r.reports[id] = rep
	r.mu.Unlock()
	return rep.node, rep.devices
}
