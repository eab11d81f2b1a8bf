package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// A request without a project goes to the caller's only project, or to
// "default" among several; with several and no "default" it is refused
// with their names. An image on the local runtime is dropped, with a
// warning.
func TestCompleteRequest(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	st := f.srv.store
	other, err := st.UserByName(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	project := func(name string) int64 {
		p := store.Project{Name: name, CreatedAt: time.Now(), UpdatedAt: time.Now()}
		if err := st.CreateProject(ctx, &p); err != nil {
			t.Fatal(err)
		}
		return p.ID
	}
	join := func(id int64) {
		if err := st.SetMember(ctx, store.Member{ProjectID: id, UserID: other.ID, Role: store.RoleDeveloper}); err != nil {
			t.Fatal(err)
		}
	}
	complete := func() (sdk.CreateSessionRequest, []string, error) {
		req := sdk.CreateSessionRequest{}
		w, err := f.srv.completeRequest(ctx, other, &req)
		return req, w, err
	}

	if _, _, err := complete(); err == nil || !strings.Contains(err.Error(), "you may use no project") {
		t.Errorf("no project: err %v, want one that says so", err)
	}
	join(project("ml"))
	if req, _, err := complete(); err != nil || req.Project != "ml" {
		t.Errorf("one project: %q, %v; want ml", req.Project, err)
	}
	join(project("cv"))
	if _, _, err := complete(); err == nil || !strings.Contains(err.Error(), "several projects (cv, ml)") {
		t.Errorf("two projects: err %v, want one that lists them", err)
	}
	def, err := st.ProjectByName(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	join(def.ID)
	if req, _, err := complete(); err != nil || req.Project != "default" {
		t.Errorf("three projects with default: %q, %v; want default", req.Project, err)
	}

	req := sdk.CreateSessionRequest{Project: "ml", Image: "python-cuda"}
	warnings, err := f.srv.completeRequest(ctx, other, &req)
	if err != nil || req.Image != "" || len(warnings) != 1 || !strings.Contains(warnings[0], `--image "python-cuda" is ignored`) {
		t.Errorf("an image on the local runtime: image %q, warnings %q, %v; want it dropped with a warning", req.Image, warnings, err)
	}
}
