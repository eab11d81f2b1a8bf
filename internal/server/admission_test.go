package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/postgres"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/store/storetest"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// Hundreds of concurrent create/end requests from many users against small
// project, per-user and org caps, a quarter of them waiting in the queue:
// replaying the audit log, which records every start and end in the
// transaction that made it (the queue's admissions included), shows no
// moment at which any cap was exceeded. Run on both engines.
func TestAdmissionNeverExceedsCaps(t *testing.T) {
	engines := map[string]func(t *testing.T) store.Store{
		"sqlite": func(t *testing.T) store.Store {
			st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "devgpu.db"))
			if err != nil {
				t.Fatal(err)
			}
			return st
		},
		"postgres": func(t *testing.T) store.Store {
			url := storetest.PostgresDB(t, storetest.PostgresServer(t))
			st, err := postgres.Open(t.Context(), url)
			if err != nil {
				t.Fatal(err)
			}
			return st
		},
	}
	for name, open := range engines {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testCaps(t, open(t))
		})
	}
}

const (
	capUsers      = 12
	capWorkers    = 32
	capRounds     = 6
	capPerUser    = 2
	capProjectP   = 5
	capProjectQ   = 4
	capOrgQuotaT4 = 6
	capQueueWait  = 200 * time.Millisecond
)

func testCaps(t *testing.T, st store.Store) {
	t.Cleanup(func() { st.Close() })
	ctx := testutil.Context(t, testutil.WaitLong)
	now := time.Now()
	admin, err := Bootstrap(ctx, st, "root", true, true, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetOrgPolicy(ctx, sdk.OrgPolicy{Quotas: []sdk.Quota{{GPUType: "t4", Max: capOrgQuotaT4}}}); err != nil {
		t.Fatal(err)
	}
	caps := map[string]int{"p": capProjectP, "q": capProjectQ}
	var projects []store.Project
	for name, max := range caps {
		p := store.Project{Name: name, Settings: sdk.ProjectSettings{MaxGPUs: ptr(max), MaxGPUsPerUser: ptr(capPerUser)}, CreatedAt: now, UpdatedAt: now}
		if err := st.CreateProject(ctx, &p); err != nil {
			t.Fatal(err)
		}
		projects = append(projects, p)
	}
	tokens := make([]string, capUsers)
	for i := range tokens {
		u := store.User{Name: fmt.Sprintf("user%d", i), CreatedAt: now}
		if err := st.CreateUser(ctx, &u); err != nil {
			t.Fatal(err)
		}
		for _, p := range projects {
			if err := st.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: u.ID, Role: store.RoleDeveloper}); err != nil {
				t.Fatal(err)
			}
		}
		if tokens[i], _, err = NewToken(ctx, st, u.ID, "t", now, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	devs, _ := hostgpu.Simulated("t4:8,a100:2")
	srv, err := New(ctx, Config{Store: st, Backends: []Backend{{Name: "local", Runtime: inproc.New(inproc.NewRegistry(testutil.ShortTempDir(t), devs...))}}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })

	var admitted, refused atomic.Int64
	var wg sync.WaitGroup
	for w := range capWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _ := sdk.NewClient(hs.URL, tokens[w%capUsers])
			for r := range capRounds {
				req := sdk.CreateSessionRequest{Project: []string{"p", "q"}[(w+r)%2], GPUType: "t4"}
				if w%4 == 0 {
					// Some wait in the queue: admitted from it, or giving up.
					req.Wait = sdk.Duration(capQueueWait)
				}
				s, err := c.CreateSession(ctx, req, nil)
				if sdk.IsStatus(err, http.StatusConflict) {
					refused.Add(1)
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					t.Errorf("create: %v", err)
					return
				}
				admitted.Add(1)
				time.Sleep(time.Duration(w%3) * time.Millisecond)
				if _, err := c.StopSession(ctx, s.ID); err != nil {
					t.Errorf("stop: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if admitted.Load() == 0 || refused.Load() == 0 {
		t.Fatalf("admitted %d, refused %d: the caps must both admit and bind", admitted.Load(), refused.Load())
	}

	adminClient, _ := sdk.NewClient(hs.URL, admin)
	var events []sdk.AuditEvent
	req, _ := http.NewRequestWithContext(ctx, "GET", hs.URL+"/api/v1/audit", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := adminClient.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&events); err != nil {
		t.Fatal(err)
	}
	sort.Slice(events, func(i, j int) bool { return events[i].ID < events[j].ID })
	type owner struct{ project, user string }
	owners := map[string]owner{}
	perProject, perUser := map[string]int{}, map[owner]int{}
	orgT4, starts, maxOrg := 0, 0, 0
	for _, e := range events {
		switch e.Action {
		case "session.start":
			o := owner{e.Project, e.Actor}
			owners[e.Target] = o
			perProject[o.project]++
			perUser[o]++
			orgT4++
			starts++
			maxOrg = max(maxOrg, orgT4)
			if perProject[o.project] > caps[o.project] || perUser[o] > capPerUser || orgT4 > capOrgQuotaT4 {
				t.Fatalf("cap exceeded at event %d: project %s %d/%d, user %s %d/%d, org t4 %d/%d",
					e.ID, o.project, perProject[o.project], caps[o.project], o.user, perUser[o], capPerUser, orgT4, capOrgQuotaT4)
			}
		case "session.end":
			o, ok := owners[e.Target]
			if !ok {
				t.Fatalf("end of session %s that never started", e.Target)
			}
			delete(owners, e.Target)
			perProject[o.project]--
			perUser[o]--
			orgT4--
		}
	}
	if int64(starts) != admitted.Load() || len(owners) != 0 {
		t.Fatalf("audit shows %d starts (%d still open), API admitted %d", starts, len(owners), admitted.Load())
	}
	t.Logf("admitted %d, refused %d, peak org t4 use %d of %d", admitted.Load(), refused.Load(), maxOrg, capOrgQuotaT4)
	for _, id := range gpuHolders(context.Background(), t, st) {
		t.Errorf("session %s still holds a GPU", id)
	}
}

func ptr[T any](v T) *T { return &v }
