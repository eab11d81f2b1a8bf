package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

func ptr[T any](v T) *T { return &v }

// fullSettings sets every field of sdk.ProjectSettings; allSet checks
// that it still does when the type gains one.
func fullSettings() sdk.ProjectSettings {
	return sdk.ProjectSettings{
		GPUEnabled:     ptr(true),
		MaxGPUs:        ptr(8),
		MaxGPUsPerUser: ptr(2),
		GPUTypes:       &[]string{"t4", "a100"},
		Regions:        &[]string{"local", "eu-west"},
		DefaultImage:   ptr("ghcr.io/devgpu/cuda:12.4"),
		Images:         &[]string{"ghcr.io/devgpu/cuda:12.4", "pytorch/pytorch:2.5"},
		ShellMode:      ptr(sdk.ModeSpillover),
		IdleTimeout:    ptr(sdk.Duration(30 * time.Minute)),
		MaxLifetime:    ptr(sdk.Duration(8*time.Hour + time.Nanosecond)),
		DetachGrace:    ptr(sdk.Duration(90 * time.Second)),
		// HostAccess is the server's copy of the organisation's setting;
		// the store keeps it like any other field.
		Egress:        &sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"10.0.0.0/8", "pypi.org:443", "192.0.2.7"}, HostAccess: []string{"169.254.169.254:80"}},
		Budget:        &sdk.Budget{Amount: 1234.56, Unit: sdk.BudgetCurrency, Thresholds: []int{50, 80, 100}, Action: sdk.BudgetStop},
		Workspace:     &sdk.Workspace{Enabled: true, LimitBytes: 50 << 30},
		LogLimitBytes: ptr(int64(64 << 20)),
	}
}

// allSet fails the test when a field of the struct v is a nil pointer, or
// a nil or empty slice or map, looking into the structs v holds (directly
// or through pointers) too, so that a field a type gains is noticed.
func allSet(t *testing.T, what string, v any) {
	t.Helper()
	rv := reflect.ValueOf(v)
	for i := range rv.NumField() {
		field := rv.Type().Field(i)
		if !field.IsExported() {
			continue
		}
		f, name := rv.Field(i), what+"."+field.Name
		switch f.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Map:
			if f.IsNil() || (f.Kind() != reflect.Pointer && f.Len() == 0) {
				t.Fatalf("%s is not set: the test no longer covers every field", name)
			}
		}
		if f.Kind() == reflect.Pointer {
			f = f.Elem()
		}
		if f.Kind() == reflect.Struct {
			allSet(t, name, f.Interface())
		}
	}
}

func testSetUserDisabled(t *testing.T, ctx context.Context, s store.Store) {
	alice, bob := mustUser(t, ctx, s, "alice"), mustUser(t, ctx, s, "bob")
	if err := s.CreateToken(ctx, &store.Token{UserID: alice.ID, Hash: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	disabled := func(id int64) bool {
		t.Helper()
		u, err := s.UserByID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return u.Disabled
	}
	// Twice: setting the value it already has is no error.
	for range 2 {
		if err := s.UpdateUser(ctx, store.User{ID: alice.ID, Disabled: true}); err != nil {
			t.Fatal(err)
		}
	}
	if !disabled(alice.ID) || disabled(bob.ID) {
		t.Errorf("after disabling alice: alice %t, bob %t; want true, false", disabled(alice.ID), disabled(bob.ID))
	}
	if _, u, err := s.TokenByHash(ctx, []byte("a")); err != nil || !u.Disabled {
		t.Errorf("TokenByHash of a disabled user = %+v, %v; want Disabled", u, err)
	}
	if err := s.UpdateUser(ctx, store.User{ID: alice.ID}); err != nil {
		t.Fatal(err)
	}
	if disabled(alice.ID) {
		t.Error("alice still disabled after re-enabling")
	}
	if err := s.UpdateUser(ctx, store.User{ID: alice.ID + bob.ID, Disabled: true}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateUser(unknown) = %v, want ErrNotFound", err)
	}
}

func testTokenAdmin(t *testing.T, ctx context.Context, s store.Store) {
	alice, bob, carol := mustUser(t, ctx, s, "alice"), mustUser(t, ctx, s, "bob"), mustUser(t, ctx, s, "carol")
	token := func(u store.User, name string, expires time.Time) store.Token {
		t.Helper()
		tok := store.Token{UserID: u.ID, Name: name, Prefix: "dg_" + name, Hash: []byte(name), ExpiresAt: expires}
		if err := s.CreateToken(ctx, &tok); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	a1 := token(alice, "a1", time.Time{})
	b1 := token(bob, "b1", time.Time{})
	a2 := token(alice, "a2", time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))

	list := func(userID int64, want ...store.Token) {
		t.Helper()
		got, err := s.ListTokens(ctx, userID)
		if err != nil || len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
			t.Errorf("ListTokens(%d) = %+v, %v; want %+v", userID, got, err, want)
		}
	}
	list(alice.ID, a1, a2)
	list(bob.ID, b1)
	list(carol.ID)
	list(0, a1, b1, a2)

	if got, err := s.TokenByID(ctx, b1.ID); err != nil || !reflect.DeepEqual(got, b1) {
		t.Errorf("TokenByID = %+v, %v; want %+v", got, err, b1)
	}
	ghost := a1.ID + b1.ID + a2.ID
	if _, err := s.TokenByID(ctx, ghost); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TokenByID(unknown) = %v, want ErrNotFound", err)
	}

	// Revoked at a time given in another zone, to the nanosecond: it reads
	// back in UTC, to the microsecond.
	first := time.Date(2025, 6, 1, 17, 30, 0, 123456789, time.FixedZone("UTC+5", 5*3600))
	a1.RevokedAt = time.Date(2025, 6, 1, 12, 30, 0, 123456000, time.UTC)
	if err := s.RevokeToken(ctx, a1.ID, first); err != nil {
		t.Fatal(err)
	}
	// Revoking again, at a later time or now, keeps the first time.
	if err := s.RevokeToken(ctx, a1.ID, first.Add(time.Hour)); err != nil {
		t.Errorf("RevokeToken(again) = %v", err)
	}
	if err := s.RevokeToken(ctx, a1.ID, time.Time{}); err != nil {
		t.Errorf("RevokeToken(again, now) = %v", err)
	}
	if got, err := s.TokenByID(ctx, a1.ID); err != nil || !reflect.DeepEqual(got, a1) {
		t.Errorf("TokenByID(revoked twice) = %+v, %v; want %+v", got, err, a1)
	}
	if got, _, err := s.TokenByHash(ctx, a1.Hash); err != nil || got.RevokedAt != a1.RevokedAt {
		t.Errorf("TokenByHash(revoked) = %+v, %v; want revoked at %v", got, err, a1.RevokedAt)
	}

	// A zero time means now.
	before := time.Now().Truncate(time.Microsecond)
	if err := s.RevokeToken(ctx, a2.ID, time.Time{}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	got, err := s.TokenByID(ctx, a2.ID)
	if err != nil || got.RevokedAt.Before(before) || got.RevokedAt.After(after) || got.RevokedAt.Location() != time.UTC {
		t.Errorf("RevokeToken(zero time): revoked at %v, %v; want UTC between %v and %v", got.RevokedAt, err, before, after)
	}
	a2.RevokedAt = got.RevokedAt
	if err := s.RevokeToken(ctx, ghost, first); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeToken(unknown) = %v, want ErrNotFound", err)
	}
	list(0, a1, b1, a2) // b1 untouched
}

func testProjectSettings(t *testing.T, ctx context.Context, s store.Store) {
	full := fullSettings()
	allSet(t, "ProjectSettings", full)
	nilList := sdk.ProjectSettings{GPUTypes: new([]string), Regions: &[]string{"eu"}}
	for i, c := range []struct {
		name     string
		settings sdk.ProjectSettings
		want     sdk.ProjectSettings
	}{
		{"nothing set", sdk.ProjectSettings{}, sdk.ProjectSettings{}},
		{"everything set", full, fullSettings()},
		// Set to the zero values: still set, not inherited.
		{"zero values", sdk.ProjectSettings{
			GPUEnabled: ptr(false), MaxGPUs: ptr(0), MaxGPUsPerUser: ptr(0), DefaultImage: ptr(""), ShellMode: ptr(""),
			IdleTimeout: ptr(sdk.Duration(0)), MaxLifetime: ptr(sdk.Duration(0)), DetachGrace: ptr(sdk.Duration(0)),
			Egress: &sdk.Egress{}, Budget: &sdk.Budget{},
		}, sdk.ProjectSettings{
			GPUEnabled: ptr(false), MaxGPUs: ptr(0), MaxGPUsPerUser: ptr(0), DefaultImage: ptr(""), ShellMode: ptr(""),
			IdleTimeout: ptr(sdk.Duration(0)), MaxLifetime: ptr(sdk.Duration(0)), DetachGrace: ptr(sdk.Duration(0)),
			Egress: &sdk.Egress{}, Budget: &sdk.Budget{},
		}},
		// Empty lists mean "any": set, unlike nil ones, which inherit.
		{"empty lists", sdk.ProjectSettings{GPUTypes: &[]string{}, Regions: &[]string{}, Images: &[]string{}},
			sdk.ProjectSettings{GPUTypes: &[]string{}, Regions: &[]string{}, Images: &[]string{}}},
		// A pointer to a nil list is an empty list too (encoding/json alone
		// would write null, which reads back as not set).
		{"pointer to nil list", nilList, sdk.ProjectSettings{GPUTypes: &[]string{}, Regions: &[]string{"eu"}}},
		// Egress.Allow is omitempty: empty reads back nil, which means the same.
		{"egress without hosts", sdk.ProjectSettings{Egress: &sdk.Egress{Mode: sdk.EgressNone, Allow: []string{}}},
			sdk.ProjectSettings{Egress: &sdk.Egress{Mode: sdk.EgressNone}}},
		// So are budget thresholds; a budget in GPU-hours keeps its fraction.
		{"budget without thresholds", sdk.ProjectSettings{Budget: &sdk.Budget{Amount: 0.25, Unit: sdk.BudgetGPUHours, Thresholds: []int{}}},
			sdk.ProjectSettings{Budget: &sdk.Budget{Amount: 0.25, Unit: sdk.BudgetGPUHours}}},
	} {
		p := store.Project{Name: fmt.Sprintf("p%d", i), Settings: c.settings}
		if err := s.CreateProject(ctx, &p); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !reflect.DeepEqual(p.Settings, c.want) {
			t.Errorf("%s: CreateProject left settings %s, want %s", c.name, show(p.Settings), show(c.want))
		}
		got, err := s.ProjectByID(ctx, p.ID)
		if err != nil || !reflect.DeepEqual(got.Settings, c.want) {
			t.Errorf("%s: settings read back %s, %v; want %s", c.name, show(got.Settings), err, show(c.want))
		}
		for _, l := range []*[]string{got.Settings.GPUTypes, got.Settings.Regions, got.Settings.Images} {
			if l != nil && *l == nil {
				t.Errorf("%s: a list read back as a pointer to nil", c.name)
			}
		}
	}
	if *nilList.GPUTypes != nil {
		t.Errorf("CreateProject changed the caller's list to %v", *nilList.GPUTypes)
	}

	// An update replaces the settings: fields it leaves nil are unset.
	p, err := s.ProjectByName(ctx, "p1")
	if err != nil {
		t.Fatal(err)
	}
	for _, set := range []sdk.ProjectSettings{
		{MaxGPUs: ptr(3), GPUTypes: &[]string{}},
		{},
		fullSettings(),
	} {
		p.Settings = set
		if err := s.UpdateProject(ctx, &p); err != nil {
			t.Fatal(err)
		}
		got, err := s.ProjectByName(ctx, "p1")
		if err != nil || !reflect.DeepEqual(got, p) || !reflect.DeepEqual(got.Settings, set) {
			t.Errorf("after UpdateProject(%s): %s, %v", show(set), show(got.Settings), err)
		}
	}
	list, err := s.ListProjects(ctx)
	if err != nil || len(list) != 7 || !reflect.DeepEqual(list[1], p) {
		t.Errorf("ListProjects = %+v, %v; want 7 with p1 = %+v", list, err, p)
	}
}

func testOrgPolicy(t *testing.T, ctx context.Context, s store.Store) {
	check := func(what string, want sdk.OrgPolicy) {
		t.Helper()
		got, err := s.OrgPolicy(ctx)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("OrgPolicy %s = %s, %v; want %s", what, show(got), err, show(want))
		}
	}
	check("never set", sdk.OrgPolicy{})

	full := sdk.OrgPolicy{
		Defaults:        fullSettings(),
		Locked:          []string{"egress", "gpu_types", "max_lifetime"},
		Registries:      []string{"ghcr.io/acme", "docker.io"},
		AllowHostAccess: []string{"169.254.169.254:80", "10.1.0.0/16"},
		Quotas: []sdk.Quota{
			{GPUType: "a100", Max: 4},
			{GPUType: "t4", Region: "local", Max: 16},
			{GPUType: "h100", Region: "eu-west", Max: 0},
		},
		LogRetention: sdk.Duration(30 * 24 * time.Hour),
	}
	allSet(t, "OrgPolicy", full) // Defaults included
	if err := s.SetOrgPolicy(ctx, full); err != nil {
		t.Fatal(err)
	}
	check("with every field", full)

	// A set replaces the whole policy.
	small := sdk.OrgPolicy{Defaults: sdk.ProjectSettings{GPUEnabled: ptr(false), Regions: &[]string{}, Images: new([]string)}}
	if err := s.SetOrgPolicy(ctx, small); err != nil {
		t.Fatal(err)
	}
	check("replaced", sdk.OrgPolicy{Defaults: sdk.ProjectSettings{GPUEnabled: ptr(false), Regions: &[]string{}, Images: &[]string{}}})

	// A failed transaction leaves it as it was.
	boom := errors.New("boom")
	err := s.InTx(ctx, func(tx store.Store) error {
		if err := tx.SetOrgPolicy(ctx, full); err != nil {
			return err
		}
		if got, err := tx.OrgPolicy(ctx); err != nil || !reflect.DeepEqual(got, full) {
			return fmt.Errorf("OrgPolicy inside the transaction = %s, %v", show(got), err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	check("after a rollback", sdk.OrgPolicy{Defaults: sdk.ProjectSettings{GPUEnabled: ptr(false), Regions: &[]string{}, Images: &[]string{}}})

	if err := s.SetOrgPolicy(ctx, sdk.OrgPolicy{}); err != nil {
		t.Fatal(err)
	}
	check("set to zero", sdk.OrgPolicy{})
}

func testAudit(t *testing.T, ctx context.Context, s store.Store) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	events := []store.AuditEvent{
		{At: at, Actor: "alice", Action: "project.create", Project: "ml", Target: "ml", After: `{"name":"ml"}`},
		{At: at.Add(time.Second), Actor: "alice", Action: "project.update", Project: "ml", Target: "ml",
			Before: `{"gpu_enabled":true}`, After: `{"gpu_enabled":false,"note":"ünïcode ✓"}`},
		// The same time as the one before: ID order.
		{At: at.Add(time.Second), Actor: "system", Action: "session.end", Project: "cv", Target: "s-1"},
		// Another zone, to the nanosecond: read back in UTC, to the microsecond.
		{At: at.Add(2*time.Second + 1500*time.Nanosecond).In(time.FixedZone("UTC-3", -3*3600)), Actor: "bob", Action: "user.disable", Target: "carol"},
	}
	var lastID int64
	for i := range events {
		e := &events[i]
		in := e.At
		if err := s.AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
		if e.ID <= lastID {
			t.Errorf("AppendAudit: ID %d after %d, want increasing", e.ID, lastID)
		}
		lastID = e.ID
		if want := time.UnixMicro(in.UnixMicro()).UTC(); e.At != want {
			t.Errorf("AppendAudit left At %v, want %v", e.At, want)
		}
	}
	e0, e1, e2, e3 := events[0], events[1], events[2], events[3]
	for _, c := range []struct {
		f    store.AuditFilter
		want []store.AuditEvent
	}{
		{store.AuditFilter{}, events},
		{store.AuditFilter{Project: "ml"}, []store.AuditEvent{e0, e1}},
		{store.AuditFilter{Project: "cv"}, []store.AuditEvent{e2}},
		{store.AuditFilter{Project: "nope"}, nil},
		{store.AuditFilter{Since: at.Add(time.Second)}, []store.AuditEvent{e1, e2, e3}},
		{store.AuditFilter{Since: at.Add(time.Second + time.Nanosecond)}, []store.AuditEvent{e3}},
		{store.AuditFilter{Since: e3.At}, []store.AuditEvent{e3}},
		{store.AuditFilter{Since: e3.At.Add(-time.Nanosecond)}, []store.AuditEvent{e3}},
		{store.AuditFilter{Since: e3.At.Add(time.Nanosecond)}, nil},
		{store.AuditFilter{Limit: 2}, []store.AuditEvent{e2, e3}},
		{store.AuditFilter{Limit: 1}, []store.AuditEvent{e3}},
		{store.AuditFilter{Limit: 10}, events},
		{store.AuditFilter{Project: "ml", Limit: 1}, []store.AuditEvent{e1}},
		{store.AuditFilter{Project: "ml", Since: at.Add(time.Second)}, []store.AuditEvent{e1}},
		{store.AuditFilter{Since: at, Limit: 3}, []store.AuditEvent{e1, e2, e3}},
		{store.AuditFilter{Project: "ml", Since: at, Limit: 5}, []store.AuditEvent{e0, e1}},
	} {
		got, err := s.ListAudit(ctx, c.f)
		if err != nil || len(got) != len(c.want) || (len(got) > 0 && !reflect.DeepEqual(got, c.want)) {
			t.Errorf("ListAudit(%+v) =\n%+v, %v; want\n%+v", c.f, got, err, c.want)
		}
	}
	if _, err := s.ListAudit(ctx, store.AuditFilter{Limit: -1}); err == nil {
		t.Error("ListAudit(negative limit) succeeded")
	}

	// A zero time means now.
	before := time.Now().Truncate(time.Microsecond)
	now := store.AuditEvent{Actor: "system", Action: "gpus.sync"}
	if err := s.AppendAudit(ctx, &now); err != nil {
		t.Fatal(err)
	}
	if now.At.Before(before) || now.At.After(time.Now()) || now.At.Location() != time.UTC {
		t.Errorf("AppendAudit(zero time) set At %v, want now in UTC", now.At)
	}
	if got, err := s.ListAudit(ctx, store.AuditFilter{Limit: 1}); err != nil || len(got) != 1 || got[0] != now {
		t.Errorf("ListAudit(limit 1) = %+v, %v; want %+v", got, err, now)
	}
}

// testAuditFilters checks the actor, action (exact and prefix) and until
// filters, alone, together and with the others. A prefix is matched as
// text: the case counts, and _ and % are no wildcards.
func testAuditFilters(t *testing.T, ctx context.Context, s store.Store) {
	at := time.Date(2025, 4, 1, 9, 0, 0, 0, time.UTC)
	events := []store.AuditEvent{
		{At: at, Actor: "alice", Action: "session.start", Project: "ml", Target: "s-1"},
		{At: at.Add(time.Second), Actor: "system", Action: "session.end", Project: "ml", Target: "s-1"},
		{At: at.Add(2 * time.Second), Actor: "alice", Action: "sessions_purge", Project: "cv"},
		{At: at.Add(3 * time.Second), Actor: "bob", Action: "Session.start", Project: "cv", Target: "s-2"},
		{At: at.Add(4*time.Second + 500*time.Nanosecond), Actor: "alice", Action: "project.update", Project: "ml"},
		{At: at.Add(5 * time.Second), Actor: "Alice", Action: "session.stop", Project: "ml", Target: "s-3"},
		{At: at.Add(6 * time.Second), Actor: "bob", Action: "séance.fin", Project: "cv"},
	}
	for i := range events {
		if err := s.AppendAudit(ctx, &events[i]); err != nil {
			t.Fatal(err)
		}
	}
	e := events
	for _, c := range []struct {
		f    store.AuditFilter
		want []store.AuditEvent
	}{
		{store.AuditFilter{Actor: "alice"}, []store.AuditEvent{e[0], e[2], e[4]}},
		{store.AuditFilter{Actor: "Alice"}, []store.AuditEvent{e[5]}},
		{store.AuditFilter{Actor: "ali"}, nil},
		{store.AuditFilter{Action: "session.end"}, []store.AuditEvent{e[1]}},
		{store.AuditFilter{Action: "session"}, nil},
		{store.AuditFilter{Action: "session."}, []store.AuditEvent{e[0], e[1], e[5]}},
		{store.AuditFilter{Action: "session*"}, []store.AuditEvent{e[0], e[1], e[2], e[5]}},
		{store.AuditFilter{Action: "session_*"}, nil},
		{store.AuditFilter{Action: "sessions_*"}, []store.AuditEvent{e[2]}},
		{store.AuditFilter{Action: "%*"}, nil},
		{store.AuditFilter{Action: "séance.*"}, []store.AuditEvent{e[6]}},
		{store.AuditFilter{Action: "séance."}, []store.AuditEvent{e[6]}},
		{store.AuditFilter{Action: "*"}, events},
		{store.AuditFilter{Until: at}, nil},
		{store.AuditFilter{Until: at.Add(time.Nanosecond)}, []store.AuditEvent{e[0]}},
		{store.AuditFilter{Until: at.Add(2 * time.Second)}, []store.AuditEvent{e[0], e[1]}},
		// e[4] is stored at 4 s and 0 µs (500 ns is below the microsecond).
		{store.AuditFilter{Until: e[4].At}, []store.AuditEvent{e[0], e[1], e[2], e[3]}},
		{store.AuditFilter{Until: e[4].At.Add(time.Nanosecond)}, []store.AuditEvent{e[0], e[1], e[2], e[3], e[4]}},
		{store.AuditFilter{Since: at.Add(time.Second), Until: at.Add(3 * time.Second)}, []store.AuditEvent{e[1], e[2]}},
		{store.AuditFilter{Since: at.Add(3 * time.Second), Until: at.Add(3 * time.Second)}, nil},
		{store.AuditFilter{Actor: "alice", Action: "session."}, []store.AuditEvent{e[0]}},
		{store.AuditFilter{Project: "cv", Actor: "bob"}, []store.AuditEvent{e[3], e[6]}},
		{store.AuditFilter{Project: "ml", Action: "session.", Until: at.Add(5 * time.Second), Limit: 1}, []store.AuditEvent{e[1]}},
		{store.AuditFilter{Action: "session.", Limit: 2}, []store.AuditEvent{e[1], e[5]}},
	} {
		got, err := s.ListAudit(ctx, c.f)
		if err != nil || len(got) != len(c.want) || (len(got) > 0 && !reflect.DeepEqual(got, c.want)) {
			t.Errorf("ListAudit(%+v) =\n%+v, %v; want\n%+v", c.f, got, err, c.want)
		}
	}
}

// testAuditOrder checks that events list by time, whatever order they
// were appended in, that the limit keeps the latest by time, and that a
// failed transaction leaves no event.
func testAuditOrder(t *testing.T, ctx context.Context, s store.Store) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	late := store.AuditEvent{At: at.Add(time.Hour), Actor: "alice", Action: "a"}
	early := store.AuditEvent{At: at, Actor: "alice", Action: "b"}
	for _, e := range []*store.AuditEvent{&late, &early} {
		if err := s.AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.ListAudit(ctx, store.AuditFilter{}); err != nil || !reflect.DeepEqual(got, []store.AuditEvent{early, late}) {
		t.Errorf("ListAudit = %+v, %v; want the early event first", got, err)
	}
	if got, err := s.ListAudit(ctx, store.AuditFilter{Limit: 1}); err != nil || !reflect.DeepEqual(got, []store.AuditEvent{late}) {
		t.Errorf("ListAudit(limit 1) = %+v, %v; want the late event", got, err)
	}

	boom := errors.New("boom")
	err := s.InTx(ctx, func(tx store.Store) error {
		e := store.AuditEvent{At: at.Add(time.Minute), Actor: "bob", Action: "project.update", Project: "ml"}
		if err := tx.AppendAudit(ctx, &e); err != nil {
			return err
		}
		if e.ID == 0 {
			return errors.New("AppendAudit in a transaction left ID unset")
		}
		// The transaction reads its own event.
		if got, err := tx.ListAudit(ctx, store.AuditFilter{Project: "ml"}); err != nil || len(got) != 1 || got[0] != e {
			return fmt.Errorf("ListAudit inside the transaction = %+v, %v; want %+v", got, err, e)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	if got, err := s.ListAudit(ctx, store.AuditFilter{}); err != nil || !reflect.DeepEqual(got, []store.AuditEvent{early, late}) {
		t.Errorf("ListAudit after a rollback = %+v, %v; want the two events before", got, err)
	}

	// Committed with the change it records.
	err = s.InTx(ctx, func(tx store.Store) error {
		p := store.Project{Name: "ml"}
		if err := tx.CreateProject(ctx, &p); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, &store.AuditEvent{Actor: "bob", Action: "project.create", Project: "ml", Target: "ml"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.ListAudit(ctx, store.AuditFilter{Project: "ml"}); err != nil || len(got) != 1 || got[0].Action != "project.create" {
		t.Errorf("ListAudit after a commit = %+v, %v; want the project.create event", got, err)
	}
	// Events outlive the project they name.
	p, err := s.ProjectByName(ctx, "ml")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteProject(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ListAudit(ctx, store.AuditFilter{Project: "ml"}); err != nil || len(got) != 1 {
		t.Errorf("ListAudit after deleting the project = %+v, %v; want its event", got, err)
	}
}

// show prints a value with its pointers followed, for messages.
func show(v any) string {
	return fmt.Sprintf("%+v", deref(reflect.ValueOf(v)))
}

func deref(v reflect.Value) any {
	if d, ok := v.Interface().(sdk.Duration); ok {
		return time.Duration(d)
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return "nil"
		}
		return "&" + fmt.Sprint(deref(v.Elem()))
	case reflect.Slice:
		if v.IsNil() {
			return "[]nil"
		}
	case reflect.Struct:
		s := "{"
		for i := range v.NumField() {
			if i > 0 {
				s += " "
			}
			s += v.Type().Field(i).Name + ":" + fmt.Sprint(deref(v.Field(i)))
		}
		return s + "}"
	}
	return fmt.Sprintf("%v", v.Interface())
}
