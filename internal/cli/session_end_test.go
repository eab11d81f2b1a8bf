package cli

import (
	"strings"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

func TestEndMessage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s    sdk.Session
		want string
	}{
		{sdk.Session{State: sdk.StateEnded, EndReason: sdk.ReasonStopped, EndedBy: "ana"}, "ended: stopped by its owner ana with `devgpu sessions stop`"},
		{sdk.Session{State: sdk.StateEnded, EndReason: sdk.ReasonAdmin, EndedBy: "bob"}, "ended: stopped by administrator bob"},
		{sdk.Session{State: sdk.StateEnded, EndReason: sdk.ReasonAdmin}, "ended: stopped by administrator"},
		{sdk.Session{State: sdk.StateEnded, EndReason: sdk.ReasonIdle, EndedBy: "system"}, "ended: idle (no input, output or GPU use) for the project's idle timeout"},
		{sdk.Session{State: sdk.StateEnded, EndReason: sdk.ReasonLifetime, EndedBy: "system"}, "ended: it reached the project's maximum lifetime"},
		{sdk.Session{State: sdk.StateStopping, EndReason: sdk.ReasonBudget, Project: "ml"}, "ended: project ml spent its monthly budget"},
		{sdk.Session{State: sdk.StateEnded, EndReason: sdk.ReasonRevoked, Project: "ml"}, "ended: your access to project ml was removed"},
		{sdk.Session{State: sdk.StateEnded, EndReason: sdk.ReasonLost}, "ended: its processes disappeared (lost)"},
		{sdk.Session{State: sdk.StateFailed, Error: "image\npull failed"}, "failed: image pull failed"},
	}
	for _, tt := range tests {
		tt.s.ID = "s1"
		got := endMessage(tt.s)
		if !strings.HasPrefix(got, "session s1 ") || !strings.Contains(got, tt.want) || strings.Contains(got, "\n") {
			t.Errorf("endMessage(%s/%s) = %q, want it to say %q", tt.s.State, tt.s.EndReason, got, tt.want)
		}
	}
}
