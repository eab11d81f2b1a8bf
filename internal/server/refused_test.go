package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/sdk"
)

// TestStartRefusedByThePlatform: a start that the platform behind the
// runtime refused for a reason the user can act on (a cloud quota used
// up: runtime.RefusedError) tells the user that sentence, and nothing
// else of the error; any other start error tells only that the server's
// log has the cause. Both sessions end failed.
func TestStartRefusedByThePlatform(t *testing.T) {
	t.Parallel()
	const secret = "https://management.example/subscriptions/0000/jobs/dg-1 token=abc"
	var next error
	f := newFixture(t, func(c *Config) {
		c.Backends[0].Runtime = &hookRuntime{Runtime: c.Backends[0].Runtime, beforeStart: func(context.Context, runtime.Spec) error {
			return next
		}}
	})
	for _, tc := range []struct {
		name     string
		err      error
		status   int
		want     string
		withheld string
	}{
		{"refused", &runtime.RefusedError{Message: "Azure's quota 'Managed Environment Consumption T4 Gpus' is used up (2 of 2); wait for a session to end or ask an administrator to raise it.", Err: errors.New("PUT " + secret + ": QuotaExceeded")},
			http.StatusServiceUnavailable, "Managed Environment Consumption T4 Gpus' is used up", secret},
		{"other", errors.New("PUT " + secret + ": InternalServerError"),
			http.StatusBadGateway, "an administrator can find the cause in the server log", secret},
	} {
		next = tc.err
		code, body := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{Project: "default"})
		if code != tc.status || !strings.Contains(string(body), tc.want) || strings.Contains(string(body), tc.withheld) {
			t.Fatalf("%s: a start failing with %q answered %d %s; want %d saying %q without %q", tc.name, tc.err, code, body, tc.status, tc.want, tc.withheld)
		}
	}
	code, body := f.call(f.dev, "GET", "/api/v1/sessions?state=failed", nil)
	var list []sdk.Session
	if err := json.Unmarshal(body, &list); code != http.StatusOK || err != nil {
		t.Fatalf("list failed sessions: %d %s", code, body)
	}
	if len(list) != 2 || list[0].State != sdk.StateFailed || list[1].State != sdk.StateFailed {
		t.Fatalf("failed sessions after two failed starts: %+v; want both", list)
	}
}
