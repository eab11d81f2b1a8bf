package server

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// audit appends an event in the caller's transaction, so the change and
// its record commit or roll back together. before and after are encoded
// as JSON; nil leaves them empty. They are whole values of the same shape
// (the settings, the member, the pool), not just the fields that changed.
// A change whose before and after are the same changed nothing and is not
// recorded.
func (s *Server) audit(ctx context.Context, tx store.Store, actor, action, project, target string, before, after any) error {
	e := store.AuditEvent{At: s.now(), Actor: actor, Action: action, Project: project, Target: target,
		Before: jsonText(before), After: jsonText(after)}
	if e.Before == e.After {
		return nil
	}
	return tx.AppendAudit(ctx, &e)
}

func jsonText(v any) string {
	if v == nil {
		return ""
	}
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

// listAudit: organisation admins read everything; a project's admins read
// their project's events (and must name it). Filters: project=, actor=
// (exact), action= (exact, or every action beginning with it when it ends
// in "." or "*": session. or session*), since= (at or after) and until=
// (before), both RFC 3339.
func (a *API) listAudit(w http.ResponseWriter, r *http.Request, caller store.User) error {
	q := r.URL.Query()
	f := store.AuditFilter{Project: q.Get("project"), Actor: q.Get("actor"), Action: q.Get("action"), Limit: 10000}
	for name, t := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			parsed, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return httpapi.Errorf(http.StatusBadRequest, "%s=%q is not an RFC 3339 time such as 2026-11-26T09:00:00Z", name, v)
			}
			*t = parsed
		}
	}
	if !caller.OrgAdmin {
		if f.Project == "" {
			return httpapi.Errorf(http.StatusForbidden, "only organisation admins can read the whole audit log; name a project you administer with --project")
		}
		_, role, err := a.s.projectFor(r.Context(), a.s.store, caller, f.Project)
		if err != nil {
			return err
		}
		if err := decide(authz.ManageProject(callerOf(caller), role), "only the project's admins can read its audit log", errProjectNotFound(f.Project)); err != nil {
			return err
		}
	}
	events, err := a.s.store.ListAudit(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]sdk.AuditEvent, 0, len(events))
	for _, e := range events {
		out = append(out, sdk.AuditEvent{ID: e.ID, At: e.At.UTC(), Actor: e.Actor, Action: e.Action,
			Project: e.Project, Target: e.Target, Before: rawJSON(e.Before), After: rawJSON(e.After)})
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

func rawJSON(s string) any {
	if s == "" {
		return nil
	}
	return json.RawMessage(s)
}

// poolBefore is the warm pool that req changes, as the audit log records
// it, or nil when there is none yet.
func poolBefore(ctx context.Context, tx store.Store, p store.Project, req sdk.WarmPool) (any, error) {
	pools, err := tx.ListWarmPools(ctx)
	if err != nil {
		return nil, err
	}
	for _, wp := range pools {
		if wp.ProjectID == p.ID && wp.GPUType == req.GPUType && wp.Image == req.Image {
			return poolAudit(p, wp.GPUType, wp.Image, wp.Size), nil
		}
	}
	return nil, nil
}

// poolAudit is a warm pool for the audit log; nil when its size is 0
// (removed).
func poolAudit(p store.Project, gpuType, image string, size int) any {
	if size == 0 {
		return nil
	}
	return sdk.WarmPool{Project: p.Name, GPUType: gpuType, Image: image, Size: size}
}
