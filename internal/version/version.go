// Package version says which devgpu this is, for `devgpu --version`,
// `devgpu doctor`, the server's log and /healthz.
//
// A release build sets Version with
//
//	go build -ldflags "-X github.com/devgpu/devgpu/internal/version.Version=v1.2.3"
//
// (the Makefile does, from `git describe`). Otherwise it comes from the
// build information Go records: the module's version when built with
// `go install ...@v1.2.3`, else the commit a checkout was built from,
// marked "-dirty" when the tree had uncommitted changes.
package version

import (
	"runtime/debug"
	"sync"
)

// Version is set at link time by release builds; empty otherwise.
var Version string

var (
	once   sync.Once
	cached string
)

// String is this binary's version, such as "v1.2.3", "afe59da4c1b2" or
// "afe59da4c1b2-dirty"; "devel" when the build recorded none (a plain
// `go build` with -buildvcs=false).
func String() string {
	once.Do(func() {
		info, _ := debug.ReadBuildInfo()
		cached = resolve(Version, info)
	})
	return cached
}

// resolve picks the version from the link-time value, then the module's
// version, then the VCS revision.
func resolve(linked string, info *debug.BuildInfo) string {
	if linked != "" {
		return linked
	}
	if info == nil {
		return "devel"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}
