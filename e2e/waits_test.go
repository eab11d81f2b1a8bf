package e2e

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// timingMark on a line (or the line above) says why a sleep or a timing
// measure there is the behaviour under test and not a guess at how long
// something takes.
const timingMark = "timing:"

// deadlineArg is, for each call that takes a deadline, the index of the
// argument that must come from the shared constants of internal/testutil.
var deadlineArg = map[string]int{
	"time.After":          0,
	"time.AfterFunc":      0,
	"time.NewTimer":       0,
	"time.NewTicker":      0,
	"time.Tick":           0,
	"context.WithTimeout": 1,
	"testutil.Eventually": 1,
	"testutil.Context":    1,
	"waitSession":         1, // (*env).waitSession
}

// The tests of this package wait for conditions, never for time: no
// time.Sleep, no time.Since measures, and every deadline from
// internal/testutil's shared constants, so that a slow machine is handled
// in one place and a fast one never waits. Real timing belongs in bench/.
func TestWaitsAreConditions(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files here: %v", err)
	}
	for _, f := range files {
		for _, p := range waitProblems(t, f) {
			t.Error(p)
		}
	}
}

// waitProblems parses one file and returns where it sleeps, measures time
// or takes a deadline that is not a shared constant.
func waitProblems(t *testing.T, file string) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	marked := map[int]bool{} // lines excused by a timing: comment
	for _, g := range f.Comments {
		for _, c := range g.List {
			if strings.Contains(c.Text, timingMark) {
				line := fset.Position(c.Pos()).Line
				marked[line], marked[line+1] = true, true
			}
		}
	}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		if b, ok := n.(*ast.BinaryExpr); ok && !marked[fset.Position(b.Pos()).Line] && upperBound(b) {
			out = append(out, fset.Position(b.Pos()).String()+": an upper bound on how long something took; wait for what should happen, with a shared deadline, instead")
			return true
		}
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		name := callName(call)
		pos := fset.Position(call.Pos())
		if marked[pos.Line] {
			return true
		}
		switch name {
		case "time.Sleep":
			out = append(out, pos.String()+": time.Sleep as synchronisation; wait for the condition (testutil.Eventually, term.expect, a channel) instead")
			return true
		case "time.Since":
			out = append(out, pos.String()+": time.Since measures how long something took; a functional test checks what happened (timing belongs in bench/)")
			return true
		}
		if i, ok := deadlineArg[name]; ok && i < len(call.Args) && !sharedDeadline(call.Args[i]) {
			out = append(out, pos.String()+": "+name+" with a deadline that is not one of internal/testutil's shared constants (WaitShort, WaitMedium, WaitLong)")
		}
		return true
	})
	return out
}

// callName is "pkg.Func" for a package's function and "Method" for a
// method or a local function.
func callName(call *ast.CallExpr) string {
	switch fn := call.Fun.(type) {
	case *ast.Ident:
		return fn.Name
	case *ast.SelectorExpr:
		if x, ok := fn.X.(*ast.Ident); ok && (x.Name == "time" || x.Name == "context" || x.Name == "testutil") {
			return x.Name + "." + fn.Sel.Name
		}
		return fn.Sel.Name
	}
	return ""
}

// sharedDeadline reports whether a deadline is built from testutil's
// constants, or is a parameter passed through (its callers are checked).
func sharedDeadline(e ast.Expr) bool {
	if _, ok := e.(*ast.Ident); ok {
		return true
	}
	shared := false
	ast.Inspect(e, func(n ast.Node) bool {
		if s, ok := n.(*ast.SelectorExpr); ok {
			if x, ok := s.X.(*ast.Ident); ok && x.Name == "testutil" && strings.HasPrefix(s.Sel.Name, "Wait") {
				shared = true
			}
		}
		return !shared
	})
	return shared
}

// upperBound reports whether b compares something against a fixed
// duration from above, as in `lived > 8*time.Second`. (A lower bound is a
// configured duration honoured, which a slow machine never breaks.)
func upperBound(b *ast.BinaryExpr) bool {
	switch b.Op {
	case token.GTR, token.GEQ:
		return fixedDuration(b.Y)
	case token.LSS, token.LEQ:
		return fixedDuration(b.X)
	}
	return false
}

// fixedDuration reports whether e is written with time's units, such as
// 8*time.Second.
func fixedDuration(e ast.Expr) bool {
	found := false
	ast.Inspect(e, func(n ast.Node) bool {
		if s, ok := n.(*ast.SelectorExpr); ok {
			if x, ok := s.X.(*ast.Ident); ok && x.Name == "time" {
				switch s.Sel.Name {
				case "Nanosecond", "Microsecond", "Millisecond", "Second", "Minute", "Hour":
					found = true
				}
			}
		}
		return !found
	})
	return found
}
