package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

// parseSettingFlags parses args as `admin project update` would and
// returns the request it would send, as JSON.
func parseSettingFlags(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := &cobra.Command{Use: "update"}
	var f settingFlags
	f.register(cmd)
	var unset []string
	var stop bool
	cmd.Flags().StringSliceVar(&unset, "unset", nil, "")
	cmd.Flags().BoolVar(&stop, "stop-running", false, "")
	if err := cmd.ParseFlags(args); err != nil {
		return "", err
	}
	u, err := projectUpdate(cmd, &f, unset, stop)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), nil
}

func TestSettingFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		want string // the JSON request, or the start of the error
	}{
		{"one flag sends one setting", []string{"--max-gpus", "4"},
			`{"settings":{"max_gpus":4}}`},
		{"false is sent", []string{"--gpu-enabled=false"},
			`{"settings":{"gpu_enabled":false}}`},
		{"zero is sent", []string{"--max-gpus-per-user", "0", "--idle-timeout", "0s"},
			`{"settings":{"max_gpus_per_user":0,"idle_timeout":"0s"}}`},
		{"every setting", []string{
			"--gpu-enabled", "--max-gpus=8", "--max-gpus-per-user=2", "--gpu-types", "t4, a100",
			"--regions", "local", "--default-image", "cuda:12", "--images", "cuda:12,pytorch:2",
			"--shell-mode", "spillover", "--idle-timeout", "30m", "--max-lifetime", "8h",
			"--detach-grace", "90s", "--egress", "none"},
			`{"settings":{"gpu_enabled":true,"max_gpus":8,"max_gpus_per_user":2,"gpu_types":["t4","a100"],` +
				`"regions":["local"],"default_image":"cuda:12","images":["cuda:12","pytorch:2"],"shell_mode":"spillover",` +
				`"idle_timeout":"30m0s","max_lifetime":"8h0m0s","detach_grace":"1m30s","egress":{"mode":"none"}}}`},
		{"repeated list flags add up", []string{"--gpu-types", "t4", "--gpu-types", "a100"},
			`{"settings":{"gpu_types":["t4","a100"]}}`},
		{"an empty list means any", []string{"--gpu-types", ""},
			`{"settings":{"gpu_types":[]}}`},
		{"egress-allow implies allow-list", []string{"--egress-allow", "10.0.0.0/8,pypi.org:443"},
			`{"settings":{"egress":{"mode":"allow-list","allow":["10.0.0.0/8","pypi.org:443"]}}}`},
		{"egress allow-list with destinations", []string{"--egress", "allow-list", "--egress-allow", "10.1.2.3"},
			`{"settings":{"egress":{"mode":"allow-list","allow":["10.1.2.3"]}}}`},
		{"unset, either spelling", []string{"--unset", "max-gpus,shell_mode", "--unset", "max_gpus"},
			`{"settings":{},"unset":["max_gpus","shell_mode"]}`},
		{"stop running with disable", []string{"--gpu-enabled=false", "--stop-running"},
			`{"settings":{"gpu_enabled":false},"stop_running":true}`},

		{"nothing", nil, "nothing to change"},
		{"empty unset", []string{"--unset", ""}, "nothing to change"},
		{"bad shell mode", []string{"--shell-mode", "exclusive"}, `--shell-mode "exclusive" is not a shell mode`},
		{"bad egress", []string{"--egress", "some"}, `--egress "some" is not an egress mode`},
		{"allow-list without destinations", []string{"--egress", "allow-list"}, "--egress allow-list needs destinations"},
		{"destinations with another mode", []string{"--egress", "all", "--egress-allow", "10.0.0.0/8"}, "--egress-allow lists the destinations"},
		{"bad destination", []string{"--egress-allow", "not a host"}, `egress destination "not a host"`},
		{"negative count", []string{"--max-gpus", "-1"}, "max_gpus is out of range"},
		{"bad GPU type", []string{"--gpu-types", "T4!"}, `gpu_types entry "T4!"`},
		{"unknown unset", []string{"--unset", "bogus"}, `--unset "bogus" names no setting`},
		{"set and unset", []string{"--max-gpus", "2", "--unset", "max_gpus"}, "max_gpus is both set"},
		{"stop running without disable", []string{"--stop-running"}, "--stop-running ends sessions only"},
		{"stop running while enabling", []string{"--stop-running", "--gpu-enabled"}, "--stop-running ends sessions only"},
		{"bad duration", []string{"--idle-timeout", "soon"}, `invalid argument "soon"`},
		{"log limit", []string{"--log-limit", "256MiB"}, `{"settings":{"log_limit_bytes":268435456}}`},
		{"bad log limit", []string{"--log-limit", "lots"}, `--log-limit "lots" is not a size such as 64MiB`},
		{"log limit out of range", []string{"--log-limit", "1KiB"}, "--log-limit 1KiB is out of range; give a size from 64 KiB to 4 GiB"},
		{"log limit over range", []string{"--log-limit", "5GB"}, "--log-limit 5GB is out of range; give a size from 64 KiB to 4 GiB"},
		{"log limit in decimal units", []string{"--log-limit", "64MB"}, `{"settings":{"log_limit_bytes":64000000}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseSettingFlags(t, tc.args...)
			if err != nil {
				got = err.Error()
				if !strings.HasPrefix(got, tc.want) {
					t.Fatalf("error = %q, want it to start with %q", got, tc.want)
				}
				return
			}
			if got != tc.want {
				t.Fatalf("request =\n  %s\nwant\n  %s", got, tc.want)
			}
		})
	}
}

func TestCreateSettingsHaveNoUpdateFlags(t *testing.T) {
	t.Parallel()
	cmd := newAdminProjectCmd()
	create, _, err := cmd.Find([]string{"create"})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"unset", "stop-running"} {
		if create.Flags().Lookup(name) != nil {
			t.Errorf("project create has --%s, which only update takes", name)
		}
	}
}

func TestFormatSetting(t *testing.T) {
	t.Parallel()
	// Values as sdk.Setting carries them: decoded JSON.
	values := settingValues(sdk.ProjectSettings{
		GPUEnabled: ptrTo(false), MaxGPUs: ptrTo(0), MaxGPUsPerUser: ptrTo(3),
		GPUTypes: ptrTo([]string{}), Regions: ptrTo([]string{"eu-west", "local"}),
		DefaultImage: ptrTo(""), IdleTimeout: ptrTo(sdk.Duration(0)), DetachGrace: ptrTo(sdk.Duration(0)),
		Egress:        &sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"10.0.0.0/8", "pypi.org:443"}},
		LogLimitBytes: ptrTo(int64(64 << 20)),
	})
	for _, tc := range []struct {
		name string
		want string
	}{
		{"gpu_enabled", "false"},
		{"max_gpus", "no limit"},
		{"max_gpus_per_user", "3"},
		{"gpu_types", "any"},
		{"regions", "eu-west,local"},
		{"default_image", "-"},
		{"images", "-"}, // not set
		{"idle_timeout", "never"},
		{"detach_grace", "0s"},
		{"egress", "allow-list 10.0.0.0/8,pypi.org:443"},
		{"log_limit_bytes", "64 MiB per run"},
	} {
		if got := formatSetting(tc.name, values[tc.name]); got != tc.want {
			t.Errorf("formatSetting(%s, %#v) = %q, want %q", tc.name, values[tc.name], got, tc.want)
		}
	}
	if got := formatSetting("egress", map[string]any{"mode": "all"}); got != "all" {
		t.Errorf("egress all = %q", got)
	}
	if got := formatSetting("bogus", map[string]any{"monthly": 100.0}); got != `{"monthly":100}` {
		t.Errorf("unknown object = %q", got)
	}
}

func TestSettingOrder(t *testing.T) {
	t.Parallel()
	m := map[string]sdk.Setting{"egress": {}, "zeta": {}, "gpu_enabled": {}, "bogus": {}, "max_gpus": {}}
	got := strings.Join(settingOrder(m), " ")
	if want := "gpu_enabled max_gpus egress bogus zeta"; got != want {
		t.Fatalf("order = %q, want %q", got, want)
	}
}

// TestAdminJSONFlags checks the CLI contract: every list, show and create
// has --json.
func TestAdminJSONFlags(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		switch c.Name() {
		case "list", "show", "create", "audit":
			if c.Flags().Lookup("json") == nil {
				t.Errorf("%s has no --json", c.CommandPath())
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newAdminCmd())
}

func TestSizeWords(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{0: "0 B", 1000: "1000 B", 64 << 10: "64 KiB", 1536 << 10: "1536 KiB", 4 << 30: "4 GiB", 8 << 40: "8192 GiB"} {
		if got := sizeWords(n); got != want {
			t.Errorf("sizeWords(%d) = %q; want %q", n, got, want)
		}
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{
		"64MiB": 64 << 20, "1GiB": 1 << 30, "512KiB": 512 << 10, "4096": 4096, " 50GB ": 50e9, "0": 0, "1.5KiB": 1536,
	} {
		if got, err := parseSize("log-limit", in, "64MiB"); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1MiB", "64 parsecs", "99999999999999999999"} {
		if _, err := parseSize("log-limit", in, "64MiB"); err == nil || !strings.HasPrefix(err.Error(), "--log-limit ") {
			t.Errorf("parseSize(%q): %v; want an error naming --log-limit", in, err)
		}
	}
}
