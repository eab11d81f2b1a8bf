//go:build linux

package cli

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

func TestResolveRuntime(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		runtime       string
		dev, insecure bool
		want, wantErr string
	}{
		{dev: true, want: "local"},
		{want: "oci"},
		{runtime: "local", wantErr: "--insecure-local-runtime"},
		{runtime: "local", insecure: true, want: "local"},
		{runtime: "local", dev: true, want: "local"},
		{runtime: "oci", dev: true, want: "oci"},
		{runtime: "inproc", want: "inproc"},
	} {
		o := serverOptions{runtime: tc.runtime, dev: tc.dev, insecureLocal: tc.insecure}
		err := o.resolveRuntime(slog.New(slog.DiscardHandler))
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "\n")):
			t.Errorf("%+v: error %v, want one line naming %s", tc, err, tc.wantErr)
		case tc.wantErr == "" && (err != nil || o.runtime != tc.want):
			t.Errorf("%+v: runtime %q, %v; want %q", tc, o.runtime, err, tc.want)
		}
		if err == nil && o.singleUser() != (o.runtime == "local" && !tc.insecure) {
			t.Errorf("%+v: singleUser %v", tc, o.singleUser())
		}
	}
}

func TestSecretPlace(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"/home/ada/.config/devgpu/config.json": "/home/ada/.config/devgpu",
		"/var/lib/devgpu/devgpu.db":            "/var/lib/devgpu",
		"/etc/devgpu.json":                     "/etc/devgpu.json",
		"/home/ada/config.json":                "/home/ada/config.json",
	} {
		if got := secretPlace(in); got != filepath.Clean(want) {
			t.Errorf("secretPlace(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestRuntimeCheck(t *testing.T) {
	t.Parallel()
	if r := runtimeCheck(sdk.Whoami{Runtime: "oci"}); r.Status != "ok" || !strings.Contains(r.Detail, "oci") {
		t.Errorf("oci: %+v", r)
	}
	r := runtimeCheck(sdk.Whoami{Runtime: "local", RuntimeWarnings: []string{insecureLocalWarning}})
	if r.Status != "WARN" || !strings.Contains(r.Detail, "isolates") || r.Fix == "" {
		t.Errorf("shared local runtime: %+v", r)
	}
	if err := doctorSummary([]checkResult{r}); err != nil {
		t.Errorf("a warning fails doctor: %v", err)
	}
}
