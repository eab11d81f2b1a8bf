package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// auditLog builds session events the way the server writes them: starts
// carry the GPUs in "after", ends only the state.
type auditLog struct {
	events []sdk.AuditEvent
	at     time.Time
}

func (l *auditLog) add(action, project, user, session string, gpus ...string) {
	l.at = l.at.Add(time.Millisecond)
	e := sdk.AuditEvent{ID: int64(len(l.events) + 1), At: l.at, Actor: user, Action: action, Project: project, Target: session}
	if action == "session.start" {
		b, _ := json.Marshal(map[string]any{"gpu_type": "t4", "region": "local", "gpus": gpus})
		e.After = json.RawMessage(b)
	} else {
		e.Actor = "system"
	}
	l.events = append(l.events, e)
}

func TestReplayWithinCaps(t *testing.T) {
	t.Parallel()
	l := &auditLog{at: time.Unix(1000, 0)}
	c := caps{GPUType: "t4", MaxGPUs: 2, MaxGPUsPerUser: 1, Quota: 3, Pool: 4}
	l.add("project.create", "p", "admin", "p")
	l.add("session.start", "p", "a", "s1", "g0")
	l.add("session.start", "p", "b", "s2", "g1")
	l.add("session.start", "q", "a", "s3", "g2")
	l.add("session.end", "p", "", "s1")
	l.add("session.start", "p", "a", "s4", "g0") // g0 is free again
	l.add("session.end", "p", "", "s2")
	l.add("session.end", "q", "", "s3")
	l.add("session.end", "p", "", "s4")
	r := replay(l.events, c)
	if r.Violations != 0 || r.Starts != 4 || r.Ends != 4 || r.StillActive != 0 || len(r.Anomalies) != 0 {
		t.Fatalf("unexpected %+v", r)
	}
	if r.PeakProject != 2 || r.PeakUser != 1 || r.PeakType != 3 {
		t.Errorf("peaks %d %d %d, want 2 1 3", r.PeakProject, r.PeakUser, r.PeakType)
	}
}

func TestReplayFindsEachCap(t *testing.T) {
	t.Parallel()
	c := caps{GPUType: "t4", MaxGPUs: 2, MaxGPUsPerUser: 1, Quota: 3, Pool: 4}
	tests := []struct {
		name string
		log  func(l *auditLog)
		want string
	}{
		{"user cap", func(l *auditLog) {
			l.add("session.start", "p", "a", "s1", "g0")
			l.add("session.start", "p", "a", "s2", "g1")
		}, "max_gpus_per_user 1"},
		{"project cap", func(l *auditLog) {
			l.add("session.start", "p", "a", "s1", "g0")
			l.add("session.start", "p", "b", "s2", "g1")
			l.add("session.start", "p", "c", "s3", "g2")
		}, "max_gpus 2"},
		{"org quota", func(l *auditLog) {
			l.add("session.start", "p", "a", "s1", "g0")
			l.add("session.start", "q", "a", "s2", "g1")
			l.add("session.start", "r", "a", "s3", "g2")
			l.add("session.start", "s", "a", "s4", "g3")
		}, "org quota 3"},
		{"one GPU twice", func(l *auditLog) {
			l.add("session.start", "p", "a", "s1", "g0")
			l.add("session.start", "q", "b", "s2", "g0")
		}, "still holds it"},
	}
	for _, tt := range tests {
		l := &auditLog{at: time.Unix(1000, 0)}
		tt.log(l)
		r := replay(l.events, c)
		if r.Violations != 1 || !strings.Contains(r.Examples[0], tt.want) {
			t.Errorf("%s: %d violations %q, want one naming %q", tt.name, r.Violations, r.Examples, tt.want)
		}
	}
}

// The replay orders by time, then id, whatever order the events come in;
// an end that is older than a start it would make room for counts first.
func TestReplayOrdersByTimeThenID(t *testing.T) {
	t.Parallel()
	c := caps{GPUType: "t4", MaxGPUs: 1}
	at := time.Unix(1000, 0)
	start := func(id int64, sess, gpu string, at time.Time) sdk.AuditEvent {
		b, _ := json.Marshal(map[string]any{"gpu_type": "t4", "gpus": []string{gpu}})
		return sdk.AuditEvent{ID: id, At: at, Actor: "a", Action: "session.start", Project: "p", Target: sess, After: json.RawMessage(b)}
	}
	end := func(id int64, sess string, at time.Time) sdk.AuditEvent {
		return sdk.AuditEvent{ID: id, At: at, Actor: "system", Action: "session.end", Project: "p", Target: sess}
	}
	events := []sdk.AuditEvent{
		start(3, "s2", "g1", at.Add(2*time.Millisecond)),
		end(2, "s1", at.Add(time.Millisecond)),
		start(1, "s1", "g0", at),
	}
	if r := replay(events, c); r.Violations != 0 || r.OrderInversions != 0 {
		t.Errorf("unexpected %+v", r)
	}
	// Same microsecond: the id decides.
	events = []sdk.AuditEvent{start(1, "s1", "g0", at), start(3, "s2", "g1", at), end(2, "s1", at)}
	if r := replay(events, c); r.Violations != 0 {
		t.Errorf("same time, ordered by id: unexpected %+v", r)
	}
}

func TestReplayAnomalies(t *testing.T) {
	t.Parallel()
	l := &auditLog{at: time.Unix(1000, 0)}
	l.add("session.end", "p", "", "ghost")
	l.add("session.start", "p", "a", "s1", "g0")
	r := replay(l.events, caps{GPUType: "t4"})
	if len(r.Anomalies) != 1 || r.StillActive != 1 {
		t.Errorf("unexpected %+v", r)
	}
}

func TestRefusalReason(t *testing.T) {
	t.Parallel()
	// The admission messages as internal/admission words them.
	tests := []struct {
		status int
		msg    string
		want   string
		ok     bool
	}{
		{409, "you use 2 of your 2 GPUs in project p; end a session (devgpu sessions list) or wait with --wait", "user_cap", true},
		{409, "project p uses 8 of its 8 GPUs; wait with --wait, or ask a project admin to raise max_gpus", "project_cap", true},
		{409, "the organisation's t4 quota is used up: 12 of 12 GPUs in use; wait with --wait, or ask an org admin to raise it", "org_quota", true},
		{409, "all 16 t4 GPUs are in use; try again when a session ends, or wait with --wait", "capacity", true},
		{403, "GPU sessions are disabled in project p", "other_403", true},
		{502, "the session could not be started", "", false},
	}
	for _, tt := range tests {
		err := &sdk.Error{Status: tt.status, Problem: sdk.Problem{Status: tt.status, Detail: tt.msg}}
		got, ok := refusalReason(err)
		if got != tt.want || ok != tt.ok {
			t.Errorf("refusalReason(%d %q) = %q, %v; want %q, %v", tt.status, tt.msg, got, ok, tt.want, tt.ok)
		}
	}
	if _, ok := refusalReason(errors.New("connection refused")); ok {
		t.Error("a transport error counted as a refusal")
	}
}

func TestReportAdmissions(t *testing.T) {
	t.Parallel()
	zero, two := 0, 2
	results := map[string]Result{
		admissionsSQLite: {Name: admissionsSQLite, Kind: kindAdmissions, Engine: "SQLite", N: 500, AdmissionsPerSec: 50,
			Clients: 64, Users: 8, Projects: 2, Refusals: map[string]int{"org_quota": 10, "user_cap": 3}, RefusedN: 13, Violations: &zero},
		admissionsPG: {Name: admissionsPG, Kind: kindAdmissions, Engine: "PostgreSQL", N: 20000, AdmissionsPerSec: 2000, Violations: &two,
			ViolationExamples: []string{"audit #7: project p holds 9 GPUs, max_gpus 8"}},
	}
	out := renderReport(results, false)
	for _, want := range []string{
		"| admissions (create+end), 64 clients, SQLite (admissions/s) | 50.0 /s | — |  | ≥ 1000 /s | no |",
		"| cap violations, SQLite (replayed from the audit log) | 0 violations | — |  | 0 violations | yes |",
		"| admissions (create+end), 64 clients, PostgreSQL (admissions/s) | 2000 /s | — |  | ≥ 1000 /s | yes |",
		"| cap violations, PostgreSQL (replayed from the audit log) | 2 violations | — |  | 0 violations | no |",
		"org_quota 10, user_cap 3",
		"violation: audit #7",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
