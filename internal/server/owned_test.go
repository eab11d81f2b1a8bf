package server

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// hookRuntime is a real runtime whose Start first runs a test's hook, as
// a slow image pull would hold it.
type hookRuntime struct {
	runtime.Runtime
	beforeStart func(ctx context.Context, spec runtime.Spec) error
}

func (h *hookRuntime) Start(ctx context.Context, spec runtime.Spec) (runtime.Placement, error) {
	if h.beforeStart != nil {
		if err := h.beforeStart(ctx, spec); err != nil {
			return runtime.Placement{}, err
		}
	}
	return h.Runtime.Start(ctx, spec)
}

// ownedGo lists the functions of this package allowed a go statement, each
// with who waits for what it starts. Any other go statement fails
// TestEveryGoroutineHasAnOwner: start background work with goOwned.
var ownedGo = map[string]string{
	"owned.go:goOwned":          "counted in Server.wg, which Close waits for",
	"server.go:New":             "the lifecycle loops, counted in Server.wg before they start",
	"capacity.go:watchCapacity": "the capacity watches, counted in Server.wg before they start, like the lifecycle loops",
	"server.go:Serve":           "Serve waits for http.Server.Serve to return",
	"broker.go:openShell":       "the handler waits for its keepalive before it returns",
	"broker.go:serveTunnel":     "serveTunnel waits for its two copies (wg) before it returns",
	"terminal.go:serveTerminal": "serveTerminal waits for its input, output, agent pings and page keepalives (wg) before it returns",
	"live.go:askAgents":         "askAgents waits for every agent it asked (wg) before it returns",
	"terminal.go:agentAnswers":  "agentAnswers waits for its request to be answered or the connection closed before it returns",
	"relay.go:pipe":             "pipe waits for both of its copies (wg) before it returns",
	"jobs.go:readJob":           "readJob's stop, which its caller defers, waits for the reader before it returns",
}

// TestEveryGoroutineHasAnOwner reads the package's source: a go statement
// outside the functions listed in ownedGo starts a goroutine that nothing
// waits for, which may then act after Close (start a session in the
// runtime, write to a closed store).
func TestEveryGoroutineHasAnOwner(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				if g, ok := n.(*ast.GoStmt); ok {
					if why := ownedGo[name+":"+fn.Name.Name]; why == "" {
						t.Errorf("%s: a go statement in %s has no owner that waits for it; start it with s.goOwned (owned.go), or wait for it and list the function in ownedGo",
							fset.Position(g.Pos()), fn.Name.Name)
					}
				}
				return true
			})
		}
	}
}

// TestCloseWaitsForARefill: a warm pool's refill, started in the
// background by a pool change, is still starting a session (a slow image
// pull) when the server closes. Close must not return before the refill
// has finished: a refill left running would start sessions in the runtime
// and write to the store after its owner let go of both.
func TestCloseWaitsForARefill(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var startReturned atomic.Bool
	f := newFixture(t, func(c *Config) {
		c.PoolInterval = time.Hour // only the pool change refills
		c.Backends[0].Runtime = &hookRuntime{Runtime: c.Backends[0].Runtime, beforeStart: func(ctx context.Context, spec runtime.Spec) error {
			defer startReturned.Store(true)
			entered <- struct{}{}
			<-ctx.Done() // Close cancels the refill's start
			<-release    // and the pull takes a while to give up
			return ctx.Err()
		}}
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	if code, body := f.call(f.admin, "PUT", "/api/v1/pools", sdk.WarmPool{Project: "default", GPUType: "t4", Size: 1}); code != http.StatusOK {
		t.Fatalf("set pool: %d %s", code, body)
	}
	select {
	case <-entered:
	case <-time.After(testutil.WaitMedium):
		t.Fatal("the pool change started no refill")
	}
	closed := make(chan struct{})
	go func() {
		f.srv.Close()
		close(closed)
	}()
	// Wait until Close has either returned (the bug) or is parked waiting
	// for its goroutines with every lifecycle loop gone, where only the
	// refill can hold it.
	testutil.Eventually(t, testutil.WaitMedium, "Close to return or to wait for the refill", func() bool {
		select {
		case <-closed:
			return true
		default:
		}
		closing := false
		for _, g := range strings.Split(allStacks(), "\n\n") {
			if strings.Contains(g, "(*Server).loop(") {
				return false
			}
			closing = closing || (strings.Contains(g, "(*Server).Close(") && strings.Contains(g, "sync.(*WaitGroup).Wait"))
		}
		return closing
	})
	select {
	case <-closed:
		t.Fatal("Close returned while a refill it started was still starting a session")
	default:
	}
	close(release)
	select {
	case <-closed:
	case <-time.After(testutil.WaitMedium):
		t.Fatal("Close did not return once the refill ended")
	}
	if !startReturned.Load() {
		t.Fatal("Close returned before the refill's start did")
	}
	// Nothing starts once Close has begun.
	if f.srv.goOwned(func() { t.Error("goOwned ran work after Close") }) {
		t.Fatal("goOwned took work after Close")
	}
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := goruntime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}
