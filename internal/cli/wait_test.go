package cli

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

func TestRunExit(t *testing.T) {
	t.Parallel()
	status := func(n int) *int { return &n }
	started := time.Now()
	for _, tc := range []struct {
		name string
		s    sdk.Session
		code int    // the exit status devgpu passes on
		err  string // or its sentence
	}{
		{"success", sdk.Session{ID: "r1", State: sdk.StateEnded, ExitStatus: status(0)}, 0, ""},
		{"failure", sdk.Session{ID: "r1", State: sdk.StateEnded, ExitStatus: status(7)}, 7, ""},
		{"killed", sdk.Session{ID: "r1", State: sdk.StateEnded, ExitStatus: status(137), ExitSignal: "KILL"}, 137, ""},
		{"lifetime", sdk.Session{ID: "r1", State: sdk.StateEnded, StartedAt: &started, EndReason: sdk.ReasonLifetime},
			0, "run r1 has no exit status: it reached the project's maximum lifetime"},
		{"stopped", sdk.Session{ID: "r1", State: sdk.StateEnded, StartedAt: &started, EndReason: sdk.ReasonStopped, EndedBy: "ann"},
			0, "run r1 has no exit status: stopped by its owner ann with `devgpu sessions stop`"},
		{"budget", sdk.Session{ID: "r1", State: sdk.StateEnded, StartedAt: &started, EndReason: sdk.ReasonBudget, Project: "ml"},
			0, "run r1 has no exit status: project ml spent its monthly budget"},
		{"gave up queued", sdk.Session{ID: "r1", State: sdk.StateFailed, EndReason: sdk.ReasonGaveUp, Error: "gave up after waiting 3s: no t4 free; ask again with a longer --wait"},
			0, "run r1 never started: gave up after waiting 3s: no t4 free; ask again with a longer --wait"},
		{"budget queued", sdk.Session{ID: "r1", State: sdk.StateEnded, EndReason: sdk.ReasonBudget, Project: "ml"},
			0, "run r1 never started: project ml spent its monthly budget"},
	} {
		err := runExit(tc.s)
		var code exitStatus
		switch {
		case tc.err != "":
			if err == nil || errors.As(err, &code) || !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("%s: %v; want the sentence %q", tc.name, err, tc.err)
			}
		case tc.code == 0 && err != nil:
			t.Errorf("%s: %v; want success", tc.name, err)
		case tc.code != 0 && (!errors.As(err, &code) || int(code) != tc.code):
			t.Errorf("%s: %v; want exit status %d", tc.name, err, tc.code)
		}
	}
}

// A run is asked for by its id or name as given; one the server does
// not know is told in one sentence that says where to look.
func TestSessionByRef(t *testing.T) {
	t.Parallel()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/sessions/train-1" {
			_ = json.NewEncoder(w).Encode(sdk.Session{ID: "a2", Name: "train-1"})
			return
		}
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(sdk.Problem{Status: 404, Detail: "session nope not found"})
	}))
	t.Cleanup(hs.Close)
	client, err := sdk.NewClient(hs.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t, testutil.WaitShort)
	if s, err := sessionByRef(ctx, client, "train-1"); err != nil || s.ID != "a2" {
		t.Errorf("sessionByRef(train-1) = %s, %v; want a2", s.ID, err)
	}
	_, err = sessionByRef(ctx, client, "nope")
	if want := "no session or run named nope; `devgpu sessions list --all` shows yours"; err == nil || err.Error() != want {
		t.Errorf("unknown name: %v; want %q", err, want)
	}
}

func TestDetachedNote(t *testing.T) {
	t.Parallel()
	queued := detachedNote(sdk.Session{ID: "r9", Name: "train-1", State: sdk.StateQueued},
		sdk.SessionEvent{ID: "r9", Position: 3, Reason: "project ml uses 4 of its 4 GPUs; wait or ask for more"})
	if !strings.Contains(queued, "r9 queued at position 3: project ml uses 4 of its 4 GPUs;") || !strings.Contains(queued, "devgpu logs train-1 -f") {
		t.Errorf("queued note %q", queued)
	}
	started := detachedNote(sdk.Session{ID: "r9", State: sdk.StateRunning, GPUType: "t4", GPUs: []string{"GPU-sim-t4-0"}, Project: "ml"}, sdk.SessionEvent{})
	if !strings.Contains(started, "run r9 started (t4 GPU-sim-t4-0, project ml)") || !strings.Contains(started, "devgpu wait r9") {
		t.Errorf("started note %q", started)
	}
}

func TestExitColumn(t *testing.T) {
	t.Parallel()
	seven := 7
	for want, s := range map[string]sdk.Session{"-": {}, "7": {ExitStatus: &seven}, "KILL": {ExitStatus: &seven, ExitSignal: "KILL"}} {
		if got := exitColumn(s); got != want {
			t.Errorf("exitColumn(%+v) = %q; want %q", s, got, want)
		}
	}
}

// run's detach flags that do not go together are refused before
// anything is asked of a server, in one sentence with the usage.
func TestRunDetachFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--name", "train-1", "--", "true"}, "--name names a detached run; add --detach"},
		{[]string{"run", "--detach", "--attach", "s1", "--", "true"}, "--detach starts a new session for the run and --attach runs in an existing one"},
		{[]string{"run", "--detach", "--name", "", "--", "true"}, "--name is empty; give the run a name"},
		{[]string{"run", "-d", "--wait", "2m", "--name", "c", "--", "echo hi"}, "--wait takes its duration after an equals sign: write --wait=2m"},
	} {
		root := newRoot()
		root.SetArgs(tc.args)
		err := root.Execute()
		var u *usageError
		if !errors.As(err, &u) || !strings.HasPrefix(u.msg, tc.want) || !strings.HasPrefix(u.usage, "devgpu run") {
			t.Errorf("%v: %v; want the usage error %q", tc.args, err, tc.want)
		}
	}
}

// A queued run has no GPU or region yet: its row says so, not "@".
func TestGPUColumn(t *testing.T) {
	t.Parallel()
	for want, s := range map[string]sdk.Session{
		"-":         {State: sdk.StateQueued},
		"t4":        {State: sdk.StateQueued, GPUType: "t4"},
		"any@eu":    {State: sdk.StateQueued, Region: "eu"},
		"a100@us-1": {State: sdk.StateRunning, GPUType: "a100", Region: "us-1"},
	} {
		if got := gpuColumn(s); got != want {
			t.Errorf("gpuColumn(%+v) = %q; want %q", s, got, want)
		}
	}
}

// While the server does not answer, wait says so once on stderr, and once
// when it is back, instead of being silently stuck. Not parallel: it
// reads what devgpu writes on os.Stderr, which it swaps for a pipe while
// the parallel tests are paused.
func TestWaitEndSaysServerAway(t *testing.T) {
	calls := 0
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls <= 2 {
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		zero := 0
		_ = json.NewEncoder(w).Encode(sdk.Session{ID: "r1", State: sdk.StateEnded, EndReason: sdk.ReasonCompleted, ExitStatus: &zero})
	}))
	t.Cleanup(hs.Close)
	client, err := sdk.NewClient(hs.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = w
	t.Cleanup(func() { os.Stderr = stderr })
	said := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		said <- string(b)
	}()
	s, err := waitEnd(testutil.Context(t, testutil.WaitMedium), client, "r1")
	os.Stderr = stderr
	w.Close()
	if err != nil || s.ExitStatus == nil {
		t.Fatalf("waitEnd = %+v, %v; want the ended run", s, err)
	}
	want := "devgpu: the server is unreachable; waiting for it to come back\n" +
		"devgpu: the server is back; still waiting for run r1 to end\n"
	if got := <-said; got != want {
		t.Errorf("stderr said %q; want %q", got, want)
	}
}
