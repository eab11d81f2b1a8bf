//go:build linux && !agentonly

package aca

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azruntime "github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/appcontainers/armappcontainers/v3"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
)

// pollOpts is how the runtime waits for Azure's long-running operations:
// every pollEvery unless Azure says otherwise with Retry-After (ARM's
// asynchronous operations,
// https://learn.microsoft.com/azure/azure-resource-manager/management/async-operations).
func pollOpts() *azruntime.PollUntilDoneOptions {
	return &azruntime.PollUntilDoneOptions{Frequency: pollEvery}
}

// Start refuses what the backend can never run (more than one GPU, a type
// or region it does not offer, an egress policy its environment cannot
// honour), prepares the session image, creates the session's job, starts
// one execution and returns once the agent inside has linked. It fails at
// once when the execution ends first. A failed or cancelled start deletes
// the job.
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (_ runtime.Placement, err error) {
	c := r.cfg
	if !runtime.ValidID(spec.SessionID) {
		return runtime.Placement{}, fmt.Errorf("start session: invalid session id %q", spec.SessionID)
	}
	if err := c.checkRequest(spec.GPU); err != nil {
		return runtime.Placement{}, fmt.Errorf("start session %s: %w", spec.SessionID, err)
	}
	if err := c.checkEgress(spec.Egress); err != nil {
		return runtime.Placement{}, fmt.Errorf("start session %s: %w", spec.SessionID, err)
	}
	// Two Starts of one id never both create its job: the second is
	// refused while the first is in flight.
	r.mu.Lock()
	if r.starting[spec.SessionID] {
		r.mu.Unlock()
		return runtime.Placement{}, fmt.Errorf("start session %s: a start of it is in progress on aca backend %s; wait for it", spec.SessionID, c.Backend)
	}
	r.starting[spec.SessionID] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.starting, spec.SessionID)
		r.mu.Unlock()
	}()
	base := spec.Image
	if base == "" {
		base = c.DefaultImage
	}
	r.log.Debug("session starting", "session_id", spec.SessionID, "image", base)
	if spec.Workspace != "" {
		r.log.Debug("aca mounts no workspace: the session runs without it (Azure Files is not built)", "session_id", spec.SessionID, "workspace", spec.Workspace)
	}
	image, err := r.images.prepare(ctx, base, spec.Progress)
	if err != nil {
		return runtime.Placement{}, fmt.Errorf("start session %s: %w", spec.SessionID, err)
	}
	name := c.jobName(spec.SessionID)
	log := r.log.With("session_id", spec.SessionID, "job", name)
	// ARM's PUT creates or replaces: look first, so that a job that is
	// there already (another's, or this session's from a reused id) is
	// never overwritten.
	switch existing, err := r.jobs.Get(ctx, c.ResourceGroup, name, nil); {
	case err == nil && !c.owned(existing.Tags):
		return runtime.Placement{}, fmt.Errorf("start session %s: job %s in resource group %s exists and is not aca backend %s's; remove it or use another resource group", spec.SessionID, name, c.ResourceGroup, c.Backend)
	case err == nil:
		return runtime.Placement{}, fmt.Errorf("start session %s: its job %s already exists on aca backend %s; a session id was reused", spec.SessionID, name, c.Backend)
	case !notFound(err):
		return runtime.Placement{}, fmt.Errorf("start session %s: %w", spec.SessionID, r.azureErr("look for job "+name, err))
	}
	defer func() {
		if err == nil {
			return
		}
		// ctx may be what ended the start; the cleanup has its own.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupWait)
		defer cancel()
		if rerr := r.remove(cctx, spec.SessionID, true); rerr != nil {
			log.Error("remove the job of a session whose start failed", "err", rerr)
		}
	}()
	progress := func(step string) {
		if spec.Progress != nil {
			spec.Progress(step, 0, 0)
		}
	}

	progress("creating the session's job")
	poller, err := r.jobs.BeginCreateOrUpdate(ctx, c.ResourceGroup, name, c.job(spec, image), nil)
	if err == nil {
		_, err = poller.PollUntilDone(ctx, pollOpts())
	}
	if err != nil {
		return runtime.Placement{}, fmt.Errorf("start session %s: %w", spec.SessionID, r.azureErr("create job "+name, err))
	}
	log.Info("session job created", "gpu_type", spec.GPU.Type, "gpus", spec.GPU.Count, "region", c.region, "profile", c.profile(spec.GPU.Type, spec.GPU.Count), "image", image)

	progress("starting the session's job execution")
	started, err := r.jobs.BeginStart(ctx, c.ResourceGroup, name, nil)
	var exec armappcontainers.JobsClientStartResponse
	if err == nil {
		exec, err = started.PollUntilDone(ctx, pollOpts())
	}
	if err != nil {
		return runtime.Placement{}, fmt.Errorf("start session %s: %w", spec.SessionID, r.azureErr("start an execution of job "+name, err))
	}
	if exec.Name == nil {
		return runtime.Placement{}, fmt.Errorf("start session %s: aca backend %s: Azure started an execution of job %s without naming it", spec.SessionID, c.Backend, name)
	}
	log.Info("session job execution started", "execution", *exec.Name)
	return r.await(ctx, spec, name, *exec.Name)
}

// linkResult is what WaitLinked returned.
type linkResult struct {
	report link.Report
	err    error
}

// await waits for the agent to link while it polls the execution (first
// after pollEvery, then every awaitEvery, each read bounded by readWait),
// and fails as soon as the execution ends before the agent linked, or
// reading it says the job is gone (404) or access was lost (401, 403).
func (r *Runtime) await(ctx context.Context, spec runtime.Spec, job, execName string) (runtime.Placement, error) {
	c := r.cfg
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	linked := make(chan linkResult, 1)
	go func() {
		rep, err := c.Link.WaitLinked(lctx, spec.SessionID)
		linked <- linkResult{rep, err}
	}()
	tick := time.NewTimer(pollEvery)
	defer tick.Stop()
	last := "the execution's status was not read yet"
	said := ""
	var started time.Time
	for {
		select {
		case res := <-linked:
			if res.err != nil {
				return runtime.Placement{}, fmt.Errorf("start session %s on aca backend %s: %w (last: %s)", spec.SessionID, c.Backend, res.err, last)
			}
			rep := reportAt{node: c.node(), devices: res.report.Devices}
			if res.report.Node != "" {
				rep.node = res.report.Node
			}
			if started.IsZero() {
				started = time.Now()
			}
			r.mu.Lock()
			r.known[spec.SessionID] = &session{job: job, execution: execName, started: started, report: &rep}
			r.mu.Unlock()
			return runtime.Placement{Node: rep.node, Devices: rep.devices, Handle: r.handle(job, execName)}, nil
		case <-tick.C:
			tick.Reset(awaitEvery)
			rctx, rcancel := context.WithTimeout(ctx, readWait)
			resp, err := r.api.JobExecution(rctx, c.ResourceGroup, job, execName, nil)
			rcancel()
			if err != nil {
				var re *azcore.ResponseError
				if errors.As(err, &re) {
					switch re.StatusCode {
					case http.StatusNotFound:
						return runtime.Placement{}, fmt.Errorf("start session %s: its job %s or execution %s was deleted while it started (Azure answers 404); start it again", spec.SessionID, job, execName)
					case http.StatusUnauthorized, http.StatusForbidden:
						return runtime.Placement{}, fmt.Errorf("start session %s: %w", spec.SessionID, r.azureErr("read execution "+execName+" of job "+job, err))
					}
				}
				if ctx.Err() == nil {
					r.log.Debug("read a starting session's job execution", "session_id", spec.SessionID, "err", err)
				}
				continue
			}
			x, _ := toExecution(&resp.JobExecution)
			if !x.started.IsZero() {
				started = x.started
			}
			switch x.status {
			case armappcontainers.JobExecutionRunningStateFailed, armappcontainers.JobExecutionRunningStateStopped, armappcontainers.JobExecutionRunningStateSucceeded:
				return runtime.Placement{}, fmt.Errorf("start session %s: its job execution %s/%s ended %s before its agent linked; the execution's console log (Log Analytics, ContainerAppConsoleLogs_CL) says why", spec.SessionID, job, execName, x.status)
			case armappcontainers.JobExecutionRunningStateRunning:
				last = "the execution is running; waiting for the session's agent to connect"
			default:
				last = fmt.Sprintf("the execution is %s", orUnknown(string(x.status)))
			}
			if last != said && spec.Progress != nil {
				spec.Progress(last, 0, 0)
			}
			said = last
		case <-ctx.Done():
			err := context.Cause(ctx)
			if errors.Is(err, context.DeadlineExceeded) {
				return runtime.Placement{}, fmt.Errorf("start session %s on aca backend %s: its agent did not connect in time (last: %s); check that the environment's subnet reaches aca.link_url %s (NSG, firewall, user-defined routes) and that the agent trusts its CA (aca.link_ca_file)", spec.SessionID, c.Backend, last, c.LinkURL)
			}
			return runtime.Placement{}, fmt.Errorf("start session %s on aca backend %s: %w (last: %s)", spec.SessionID, c.Backend, err, last)
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "in an unknown state"
	}
	return s
}
