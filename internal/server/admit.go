package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/admission"
	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/lifecycle"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// maxWait bounds --wait, so that a forgotten request does not wait forever.
const maxWait = 24 * time.Hour

// progressFunc hears how a request goes: its queue position and the
// reason it waits, each time either changes, and the steps of a slow start.
type progressFunc func(sdk.SessionEvent)

// createSession admits the request (or queues it, with req.Wait), starts
// the session in the runtime and returns it running. Under the shared and
// spillover shell modes it may return one of the caller's running
// sessions to attach to instead.
func (s *Server) createSession(ctx context.Context, caller store.User, req sdk.CreateSessionRequest, progress progressFunc) (store.Session, error) {
	if req.Project == "" {
		req.Project = "default"
	}
	wait := time.Duration(req.Wait)
	if wait < 0 || wait > maxWait {
		return store.Session{}, httpapi.Errorf(http.StatusBadRequest, "wait %s is out of range; give a duration up to %s", wait, maxWait)
	}
	if err := validateRun(req); err != nil {
		return store.Session{}, err
	}
	job := req.Command != ""
	requested := s.now()
	// A detached run never takes a ready session: it ends with its
	// command, which a warm pool's session never ran.
	if caller.ID != s.warmUser.ID && !job {
		sess, ok, err := s.claimWarm(ctx, caller, req, false)
		if err != nil {
			return store.Session{}, err
		}
		if ok {
			s.metrics.admissions.WithLabelValues("claimed", "").Inc()
			return sess, nil
		}
	}
	sess, d, err := s.admit(ctx, caller, req, wait)
	if err == nil && sess.State == sdk.StateQueued {
		s.metrics.admissions.WithLabelValues("queued", d.Reason).Inc()
		s.kickQueues()
		if job {
			// Its place is kept with no client waiting: the queue loop
			// starts it. The client hears where it stands, once.
			return sess, s.reportQueued(ctx, sess, progress)
		}
		return s.awaitQueued(ctx, sess.ID, progress)
	}
	switch {
	case err != nil:
		return store.Session{}, err
	case d.Outcome == admission.Refuse:
		s.metrics.admissions.WithLabelValues("refused", d.Reason).Inc()
		return store.Session{}, &httpapi.Error{Status: refusalStatus(d.Reason), Msg: d.Message}
	case d.Outcome == admission.Join:
		s.metrics.admissions.WithLabelValues("joined", "").Inc()
		return s.joinable(ctx, d.Session)
	}
	s.metrics.admissions.WithLabelValues("admitted", "").Inc()
	// Admitted (under the fence, for a warm pool's refill): the start is
	// that decision's consequence, finished whoever leads by then. A
	// detached run's start is not its client's to cancel.
	startCtx := withoutFence(ctx)
	if job {
		startCtx = context.WithoutCancel(startCtx)
	}
	return s.start(startCtx, sess, requested, progress)
}

// effective returns a project's effective policy.
func (s *Server) effective(ctx context.Context, projectID int64) (policy.Effective, error) {
	p, err := s.store.ProjectByID(ctx, projectID)
	if err != nil {
		return policy.Effective{}, err
	}
	org, err := s.store.OrgPolicy(ctx)
	if err != nil {
		return policy.Effective{}, err
	}
	return policy.Resolve(org, p.Settings), nil
}

// warnings are what the user should hear on a new shell: for now, that
// the project is past a budget threshold.
func (s *Server) warnings(ctx context.Context, sess store.Session) []string {
	p, err := s.store.ProjectByID(ctx, sess.ProjectID)
	if err != nil {
		return nil
	}
	org, err := s.store.OrgPolicy(ctx)
	if err != nil {
		return nil
	}
	eff := policy.Resolve(org, p.Settings)
	var out []string
	if w := s.workspaceWarning(sess, eff.Workspace); w != "" {
		out = append(out, w)
	}
	b, err := s.budgetUse(ctx, s.store, p, eff)
	if err != nil {
		s.log.Error("budget use", "project", p.Name, "err", err)
		return out
	}
	if w := b.warning(p.Name, s.currency()); w != "" {
		out = append(out, w)
	}
	return out
}

// decision is admission's outcome with what admitting needs.
type decision struct {
	admission.Decision
	project store.Project
	eff     policy.Effective
	ref     string // the resolved image
	// backend is where an admitted session is placed, and gpus how many
	// GPUs it holds there.
	backend string
	gpus    int
}

// decide reads the snapshot through st and applies admission. Unless
// asHead (the head of its project's queue), a request whose project has
// others waiting queues behind them instead of overtaking.
func (s *Server) decide(ctx context.Context, st store.Store, caller store.User, req sdk.CreateSessionRequest, asHead bool) (decision, error) {
	p, role, err := s.projectFor(ctx, st, caller, req.Project)
	if err != nil {
		return decision{}, err
	}
	if authz.UseProject(callerOf(caller), role) != authz.Allowed {
		return decision{}, errProjectNotFound(req.Project)
	}
	org, err := st.OrgPolicy(ctx)
	if err != nil {
		return decision{}, err
	}
	eff := policy.Resolve(org, p.Settings)
	warm := caller.ID == s.warmUser.ID
	if warm || req.Command != "" {
		// Each ready session is its own, and a detached run never joins.
		eff.ShellMode = sdk.ModeDedicated
	}
	snap, capView, err := s.snapshot(ctx, st, p, caller, eff, org)
	if err != nil {
		return decision{}, err
	}
	if warm {
		// Ready sessions count against the project's cap and the org's
		// quota, but are nobody's until claimed.
		snap.UserGPUs, snap.UserSessions = 0, nil
	}
	budget, err := s.budgetUse(ctx, st, p, eff)
	if err != nil {
		return decision{}, err
	}
	snap.Budget = budget.refusal(p.Name, s.currency())
	// The image is resolved first: a bring-your-own reference from a
	// registry the organisation does not allow is refused before any cap
	// is looked at, as DESIGN.md orders the checks.
	ref, err := resolveImage(ctx, st, org, cmp.Or(req.Image, eff.DefaultImage))
	if err != nil {
		return decision{}, err
	}
	d := admission.Decide(admission.Request{Project: p.Name, User: caller.Name, GPUType: req.GPUType, Region: req.Region, Image: req.Image}, snap)
	if d.Outcome == admission.Admit && !asHead {
		n, err := s.queueLength(ctx, st, p.ID)
		if err != nil {
			return decision{}, err
		}
		if n > 0 {
			d = admission.Decision{Outcome: admission.Refuse, Reason: admission.ReasonCapacity, Queueable: true,
				Message: fmt.Sprintf("%d requests are waiting for GPUs in project %s; wait your turn with --wait", n, p.Name)}
		}
	}
	out := decision{Decision: d, project: p, eff: eff, ref: ref}
	if d.Outcome == admission.Admit {
		// Admission chose the type and region from the sum of every
		// backend's; the session goes to the backend with the most free.
		backend, ok := capView.place(d.GPUType, d.Region, sessionGPUs)
		if !ok {
			out.Decision = admission.Decision{Outcome: admission.Refuse, Reason: admission.ReasonCapacity, Queueable: true,
				Message: fmt.Sprintf("no backend has a free %s GPU in region %s; try again when a session ends, or wait with --wait", d.GPUType, d.Region)}
			return out, nil
		}
		out.backend, out.gpus = backend, sessionGPUs
	}
	return out, nil
}

// sessionGPUs is how many GPUs a session holds: one, for now.
const sessionGPUs = 1

// admit decides and, when admitted, reserves the GPUs and records the
// session as starting, in one transaction that serialises with every other
// admission, so that no cap is ever exceeded. A refusal that may queue,
// of a request that may wait, records it as a queued session in the same
// transaction, so that nobody overtakes it. (Refusals take the lock too:
// deciding them outside it measured 8x slower on SQLite under a storm of
// retried refusals, which then crowd out the admissions.)
func (s *Server) admit(ctx context.Context, caller store.User, req sdk.CreateSessionRequest, wait time.Duration) (store.Session, admission.Decision, error) {
	var sess store.Session
	var d decision
	err := s.store.InTx(ctx, func(tx store.Store) error {
		if err := s.checkFence(ctx, tx); err != nil {
			return err // a warm pool's refill by a replica that lost the lease
		}
		var err error
		if d, err = s.decide(ctx, tx, caller, req, false); err != nil {
			return err
		}
		if d.Outcome == admission.Refuse && d.Queueable && wait > 0 {
			sess, err = s.enqueue(ctx, tx, caller, req, d, wait)
			return err
		}
		if d.Outcome != admission.Admit {
			return nil
		}
		p := d.project
		sess = store.Session{
			ID: newSessionID(), ProjectID: p.ID, Project: p.Name, UserID: caller.ID, User: caller.Name,
			State: sdk.StateStarting, CreatedAt: s.now(),
			GPUType: d.GPUType, Region: d.Region, DetachGrace: d.eff.DetachGrace, Image: d.ref,
			Backend: d.backend, GPUCount: d.gpus, Starter: s.replicaID(),
			Name: req.Name, Command: req.Command,
		}
		if err := tx.CreateSession(ctx, &sess); err != nil {
			return err
		}
		return s.audit(ctx, tx, caller.Name, "session.start", p.Name, sess.ID, nil,
			map[string]any{"gpu_type": sess.GPUType, "region": sess.Region, "backend": sess.Backend, "gpu_count": sess.GPUCount, "image": d.ref})
	})
	if err == nil && d.Outcome == admission.Refuse && sess.ID == "" {
		s.log.Debug("session refused", "project", req.Project, "user", caller.Name, "reason", d.Reason)
	}
	return sess, d.Decision, err
}

// snapshot reads the usage that admission decides on, and the capacity
// view placement chooses a backend from. The transaction serialises with
// every other admission, so neither can change underneath.
func (s *Server) snapshot(ctx context.Context, tx store.Store, p store.Project, caller store.User, eff policy.Effective, org sdk.OrgPolicy) (admission.Snapshot, capacityView, error) {
	active, err := tx.ListSessions(ctx, store.SessionFilter{ActiveOnly: true})
	if err != nil {
		return admission.Snapshot{}, capacityView{}, err
	}
	v, err := s.readCapacity(ctx, tx, active)
	if err != nil {
		return admission.Snapshot{}, capacityView{}, err
	}
	return projectSnapshot(active, v, p, caller, eff, org), v, nil
}

// projectSnapshot is admission's snapshot for the caller in project p, of
// the active sessions and the capacity view read (also where projects
// stand, standing.go).
func projectSnapshot(active []store.Session, v capacityView, p store.Project, caller store.User, eff policy.Effective, org sdk.OrgPolicy) admission.Snapshot {
	snap := admission.Snapshot{Policy: eff, Quotas: org.Quotas, Pools: v.pools(), InUse: v.inUse()}
	for _, a := range active {
		if a.ProjectID != p.ID {
			continue
		}
		n := gpuCount(a)
		snap.ProjectGPUs += n
		if a.UserID == caller.ID {
			snap.UserGPUs += n
			// A detached run is no shell's to join: it ends with its command.
			if (a.State == sdk.StateRunning || a.State == sdk.StateStarting) && a.Command == "" {
				snap.UserSessions = append(snap.UserSessions, admission.UserSession{ID: a.ID, GPUs: n, Attachments: a.Attachments})
			}
		}
	}
	return snap
}

// start starts an admitted session in the runtime and marks it running.
func (s *Server) start(ctx context.Context, sess store.Session, requested time.Time, progress progressFunc) (store.Session, error) {
	defer s.starts.returnedFrom(sess.ID) // an outcome the store refused is retried (failReturnedStarts)
	log := s.log.With("session_id", sess.ID, "project", sess.Project, "user", sess.User)
	backend := s.backendOf(sess)
	log.Info("session starting", "backend", backend.Name, "gpu_type", sess.GPUType, "region", sess.Region, "gpu_count", sess.GPUCount, "image", sess.Image)
	// A session that cannot start ends as failed, giving its GPUs back.
	fail := func(err error) (store.Session, error) {
		log.Error("session failed to start", "backend", backend.Name, "err", err)
		if endErr := s.recordEnd(context.WithoutCancel(ctx), sess.ID, sdk.StateFailed, sdk.ReasonError, "system", s.now()); endErr != nil {
			log.Error("record failed session", "err", endErr)
		}
		s.forget(sess.ID) // its link, if its agent made one
		// A refusal the platform gave for the user to act on (a cloud
		// quota) is told; anything else may hold the backend's internals.
		if refused, ok := errors.AsType[*runtime.RefusedError](err); ok {
			return store.Session{}, &httpapi.Error{Status: http.StatusServiceUnavailable,
				Msg: "the session could not be started: " + refused.Message, Err: err}
		}
		return store.Session{}, &httpapi.Error{Status: http.StatusBadGateway,
			Msg: "the session could not be started; an administrator can find the cause in the server log", Err: err}
	}
	eff, err := s.effective(ctx, sess.ProjectID)
	if err != nil {
		return fail(err)
	}
	egress := eff.Egress
	spec := runtime.Spec{
		SessionID: sess.ID, Project: sess.Project, User: sess.User,
		GPU:         runtime.GPURequest{Type: sess.GPUType, Region: sess.Region, Count: gpuCount(sess)},
		AgentSecret: s.agentSecret(sess.ID), LinkCredential: s.linkCredential(sess.ID),
		IdleExit: sess.DetachGrace + agentIdleExitMargin, Image: sess.Image, Egress: egress,
	}
	if spec.Workspace, spec.WorkspaceReadOnly, err = s.workspace(sess, eff.Workspace); err != nil {
		return fail(err)
	}
	if spec.Workspace != "" {
		spec.WorkspaceLimitBytes = eff.Workspace.LimitBytes
	}
	if progress != nil {
		spec.Progress = func(step string, done, total int64) {
			progress(sdk.SessionEvent{Step: step, Done: done, Total: total})
		}
	}
	// A stop while the runtime starts it cancels the start; what the
	// runtime started all the same is stopped once Start returns.
	startCtx, cancelStart := context.WithCancel(ctx)
	s.starts.begin(sess.ID, cancelStart)
	defer cancelStart()
	defer s.starts.done(sess.ID)
	placement, err := s.startRuntime(startCtx, backend, spec)
	if err != nil {
		if stopped, stopErr := s.stoppedWhileStarting(ctx, sess.ID); stopped {
			return store.Session{}, stopErr
		}
		return fail(err)
	}
	now := s.now()
	s.mu.Lock()
	warm := sess.UserID == s.warmUser.ID
	s.live[sess.ID] = &liveSession{
		projectID: sess.ProjectID, backend: backend.Name, gpus: placement.Devices, secret: s.agentSecret(sess.ID),
		lastSeen: now, startedAt: now, requested: requested, warm: warm,
	}
	s.mu.Unlock()
	s.refreshLimits(context.WithoutCancel(ctx), sess.ProjectID)
	tctx := context.WithoutCancel(ctx)
	err = s.recordRunning(tctx, sess.ID, func(ss *store.Session) {
		ss.DetachedAt, ss.LastSeenAt = now, now
		ss.GPUs, ss.Node, ss.Handle = placement.Devices, placement.Node, placement.Handle
		// A warm session is metered from when a user claims it.
		if !warm {
			ss.StartedAt = now
		}
	})
	if err != nil {
		// Stopped meanwhile (the move to running is refused), or the
		// store failed: either way the runtime's session must not stay,
		// nor count as live.
		s.forget(sess.ID)
		if stopped, stopErr := s.stoppedWhileStarting(ctx, sess.ID); stopped {
			return store.Session{}, stopErr
		}
		if stopErr := backend.Runtime.Stop(tctx, sess.ID); stopErr != nil {
			log.Error("stop a session whose start could not be recorded", "err", stopErr)
		}
		return fail(err)
	}
	s.kickQueues() // a joinable session may now be running
	if sess.Command != "" {
		s.startJobNow(sess.ID, sess.Command) // its command starts, and its output is kept
	}
	s.metrics.startup.Observe(now.Sub(requested).Seconds())
	log.Info("session running", "backend", backend.Name, "node", placement.Node, "gpus", strings.Join(placement.Devices, ","),
		"handle", placement.Handle, "start_ms", now.Sub(requested).Milliseconds())
	return s.store.Session(ctx, sess.ID)
}

// recordRunning moves a session whose runtime start returned to running.
// A store that cannot be reached is waited for (as long as the server
// runs): the session runs, and its start is still in flight here, so no
// one else fails it; giving up would stop a session that started fine.
func (s *Server) recordRunning(ctx context.Context, id string, change func(*store.Session)) error {
	t := time.NewTicker(s.cfg.StoreRetryInterval)
	defer t.Stop()
	for retried := false; ; retried = true {
		err := s.store.InTx(ctx, func(tx store.Store) error {
			if retried {
				// The last try's commit may have gone through unanswered:
				// only this start moves the session to running.
				if cur, err := tx.Session(ctx, id); err != nil || cur.State == sdk.StateRunning {
					return err
				}
			}
			_, err := s.transition(ctx, tx, id, sdk.StateRunning, change)
			return err
		})
		if !errors.Is(err, store.ErrUnavailable) {
			return err
		}
		s.storeWrote(err)
		s.log.Warn("record a started session as running; retried once the store answers", "session_id", id, "err", err)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return err
		}
	}
}

// joinable waits until a session chosen to join is running and returns
// it. It may still be starting for another shell: the wait lasts as long
// as the start does (an image pull may take minutes), until the session
// runs, fails or ends, or ctx (the joining client's request) is done.
func (s *Server) joinable(ctx context.Context, id string) (store.Session, error) {
	for {
		sess, err := s.store.Session(ctx, id)
		if err != nil {
			return store.Session{}, err
		}
		switch {
		case sess.State == sdk.StateRunning && s.attachable(id):
			return sess, nil
		case lifecycle.Final(sess.State) || sess.State == sdk.StateStopping:
			return store.Session{}, errSessionNotRunning(id)
		}
		select {
		case <-ctx.Done():
			return store.Session{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// attachable reports whether a running session may take a shell: not
// while this replica ends it.
func (s *Server) attachable(id string) bool {
	return !s.endingHere(id)
}

func refusalStatus(reason string) int {
	switch reason {
	case admission.ReasonGPUDisabled, admission.ReasonTypeForbidden, admission.ReasonImage, admission.ReasonBudget:
		return http.StatusForbidden
	case admission.ReasonUnknownGPU:
		return http.StatusBadRequest
	default:
		return http.StatusConflict
	}
}
