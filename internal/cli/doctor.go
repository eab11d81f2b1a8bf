package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/version"
	"github.com/devgpu/devgpu/sdk"
)

// sshConfigMarker starts the block `devgpu config-ssh` writes into
// ~/.ssh/config.
const sshConfigMarker = "# --- devgpu start ---"

// doctorTimeout bounds each network check.
const doctorTimeout = 10 * time.Second

// checkResult is one line of `devgpu doctor`.
type checkResult struct {
	Check  string `json:"check"`
	Status string `json:"status"` // ok, FAIL, skip, or WARN (a risk that fails nothing)
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// doctor runs the checks; its fields are what it reads from the machine.
type doctor struct {
	configPath    string
	sshConfigPath string
	getenv        func(string) string
	http          *http.Client
	version       string // this CLI's
}

// tokenFromEnv is the fix for a token that DEVGPU_TOKEN supplies.
const tokenFromEnv = "DEVGPU_TOKEN in your environment overrides the token in your config; unset it (`unset DEVGPU_TOKEN`) or set it to a token the server accepts"

func newDoctorCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the config, server, login, projects, GPUs and ssh config, and say what to fix",
		Long: `Check, one line each, that the CLI config is valid, the server answers,
your token is accepted, you may use a project with GPUs, and ~/.ssh/config
has the block ` + "`devgpu config-ssh`" + ` writes. Each failure says what to fix.
Exits 0 when every check passes, 255 otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d := doctor{getenv: os.Getenv, http: &http.Client{Timeout: doctorTimeout}, version: version.String()}
			var err error
			if d.configPath, err = configPath(); err != nil {
				return err
			}
			if home, err := os.UserHomeDir(); err == nil {
				d.sshConfigPath = filepath.Join(home, ".ssh", "config")
			}
			results := d.run(cmd.Context())
			if asJSON {
				if err := printJSON(results); err != nil {
					return err
				}
			} else {
				printChecks(os.Stdout, results)
			}
			return doctorSummary(results)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printChecks(w io.Writer, results []checkResult) {
	for _, r := range results {
		line := fmt.Sprintf("%-4s  %-10s  %s", r.Status, r.Check, r.Detail)
		if r.Fix != "" {
			line += " — " + r.Fix
		}
		fmt.Fprintln(w, line)
	}
}

// doctorSummary is nil when every check passed, else a one-line error.
func doctorSummary(results []checkResult) error {
	var failed []string
	for _, r := range results {
		if r.Status == "FAIL" {
			failed = append(failed, r.Check)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d checks failed (%s)", len(failed), len(results), strings.Join(failed, ", "))
}

func (d doctor) run(ctx context.Context) []checkResult {
	var out []checkResult
	add := func(check, status, detail, fix string) {
		out = append(out, checkResult{Check: check, Status: status, Detail: detail, Fix: fix})
	}
	skip := func(checks ...string) {
		for _, c := range checks {
			add(c, "skip", "not checked: an earlier check failed", "")
		}
	}

	add("version", "ok", "devgpu "+d.version, "")
	cfg, cr := d.checkConfig()
	out = append(out, cr)
	if cr.Status == "FAIL" {
		skip("server", "login", "projects", "gpus")
	} else {
		api, serverVersion := d.checkAPI(ctx, cfg)
		out = append(out, api...)
		if serverVersion != "" {
			out[0].Detail += ", server " + serverVersion
		}
	}
	out = append(out, d.checkSSHConfig())
	return out
}

// checkConfig reads the config as loadConfig does, but tells a missing
// file, bad JSON and missing fields apart.
func (d doctor) checkConfig() (config, checkResult) {
	r := checkResult{Check: "config"}
	var c config
	var fileToken string
	b, err := os.ReadFile(d.configPath)
	var source string
	switch {
	case errors.Is(err, fs.ErrNotExist):
		source = "no config file at " + d.configPath
	case err != nil:
		r.Status, r.Detail, r.Fix = "FAIL", fmt.Sprintf("cannot read %s: %v", d.configPath, err), "fix its permissions"
		return c, r
	default:
		if err := json.Unmarshal(b, &c); err != nil {
			r.Status, r.Detail = "FAIL", fmt.Sprintf("%s is not valid JSON: %v", d.configPath, err)
			r.Fix = "fix it, or log in again with `devgpu login URL`"
			return c, r
		}
		source = d.configPath
		c.pick(c.URL)
		fileToken = c.Token
	}
	var env []string
	if v := d.getenv("DEVGPU_URL"); v != "" {
		fileURL := c.URL
		c.URL = v
		c.pick(fileURL)
		env = append(env, "DEVGPU_URL")
	}
	if v := d.getenv("DEVGPU_TOKEN"); v != "" {
		c.Token = v
		c.tokenFromEnv = true
		env = append(env, "DEVGPU_TOKEN")
	}
	if v := d.getenv("DEVGPU_CA_FILE"); v != "" {
		c.CAFile = v
		env = append(env, "DEVGPU_CA_FILE")
	}
	if len(env) > 0 {
		source += " with " + strings.Join(env, " and ") + " from the environment"
	}
	switch {
	case c.URL == "" && c.Token == "":
		r.Status, r.Detail, r.Fix = "FAIL", source+": no server URL or token", "run `devgpu login URL` (or `devgpu server --dev` on this machine)"
	case c.URL == "":
		r.Status, r.Detail, r.Fix = "FAIL", source+": no server URL", "run `devgpu login URL` or set DEVGPU_URL"
	case c.Token == "":
		r.Status, r.Detail, r.Fix = "FAIL", source+": no token", "run `devgpu login URL` or set DEVGPU_TOKEN"
	default:
		if _, err := sdk.NewClient(c.URL, c.Token); err != nil {
			r.Status, r.Detail, r.Fix = "FAIL", source+": "+err.Error(), "run `devgpu login URL` with the right URL"
			return c, r
		}
		if c.CAFile != "" {
			if err := new(sdk.Client).TrustCAFile(c.CAFile); err != nil {
				r.Status, r.Detail, r.Fix = "FAIL", source+": "+err.Error(), "run `devgpu login URL --ca-file FILE` with the server's CA file"
				return c, r
			}
		}
		r.Status, r.Detail = "ok", source+" (server "+c.URL+")"
		if c.tokenFromEnv && fileToken != "" && fileToken != c.Token {
			r.Status = "WARN"
			r.Detail += "; DEVGPU_TOKEN overrides the token in " + d.configPath
			r.Fix = "unset DEVGPU_TOKEN to use the config's token"
		}
	}
	return c, r
}

// checkAPI checks the server, the token, the projects and the GPUs, and
// returns the server's version when it answered.
func (d doctor) checkAPI(ctx context.Context, cfg config) ([]checkResult, string) {
	var out []checkResult
	add := func(check, status, detail, fix string) {
		out = append(out, checkResult{Check: check, Status: status, Detail: detail, Fix: fix})
	}
	client, _ := sdk.NewClient(cfg.URL, cfg.Token) // checked by checkConfig
	client.HTTP = &http.Client{Timeout: d.http.Timeout, Transport: d.http.Transport}
	if cfg.CAFile != "" {
		_ = client.TrustCAFile(cfg.CAFile) // checked by checkConfig
	}

	ctx2, cancel := context.WithTimeout(ctx, doctorTimeout)
	defer cancel()
	serverVersion, err := d.healthz(ctx2, client)
	if err != nil {
		fix := "start it (`devgpu server --dev` on this machine) or check the URL with `devgpu login URL`"
		if sdk.IsUntrusted(err) {
			fix = "give the server's CA file with `devgpu login " + client.URL.String() + " --ca-file FILE`"
		}
		add("server", "FAIL", err.Error(), fix)
		add("login", "skip", "not checked: the server is unreachable", "")
		add("projects", "skip", "not checked: the server is unreachable", "")
		add("gpus", "skip", "not checked: the server is unreachable", "")
		return out, ""
	}
	if detail, ok := transportSecurity(client); !ok {
		add("server", "FAIL", client.URL.String()+" is reachable, "+detail, "log in with the server's https:// URL (`devgpu login https://...`)")
	} else {
		add("server", "ok", client.URL.String()+" is reachable, "+detail, "")
	}

	me, err := client.Whoami(ctx2)
	if err != nil {
		fix := "check the server, then log in again with `devgpu login " + client.URL.String() + "`"
		if sdk.IsStatus(err, http.StatusUnauthorized) {
			err = errors.New("the server does not accept your token")
			fix = "ask an admin for a new token, then run `devgpu login " + client.URL.String() + "`"
			if cfg.tokenFromEnv {
				err = errors.New("the server does not accept the token in DEVGPU_TOKEN")
				fix = tokenFromEnv
			} else if cfg.current().Method == methodSSO {
				err = errors.New("the server does not accept your single sign-on credential (it expired or the sign-in ended)")
				fix = "run `devgpu login " + client.URL.String() + "` (any other devgpu command renews a credential that has not ended)"
			}
		}
		add("login", "FAIL", err.Error(), fix)
		add("projects", "skip", "not checked: not logged in", "")
		add("gpus", "skip", "not checked: not logged in", "")
		return out, serverVersion
	}
	who := "logged in as " + me.User
	if me.OrgAdmin {
		who += " (org admin)"
	}
	add("login", "ok", who, "")
	if me.Runtime != "" {
		out = append(out, runtimeCheck(me))
	}

	projects, err := client.Projects(ctx2)
	switch {
	case err != nil:
		add("projects", "FAIL", "cannot list projects: "+err.Error(), "check the server's logs")
	case len(projects) == 0:
		add("projects", "FAIL", "you may use no project", "ask a project admin to add you (`devgpu admin member add PROJECT "+me.User+"`)")
	default:
		names := make([]string, len(projects))
		for i, p := range projects {
			names[i] = p.Name
		}
		add("projects", "ok", strings.Join(names, ", "), "")
	}

	pools, err := client.GPUs(ctx2)
	free, total := 0, 0
	var parts []string
	for _, p := range pools {
		free += p.Free
		total += p.Total
		parts = append(parts, fmt.Sprintf("%s/%s %d/%d free", p.Type, p.Region, p.Free, p.Total))
	}
	switch {
	case err != nil:
		add("gpus", "FAIL", "cannot list GPUs: "+err.Error(), "check the server's logs")
	case total == 0:
		add("gpus", "FAIL", "no GPU you may use", "ask an admin to enable GPUs and allow a GPU type for your project")
	case free == 0:
		add("gpus", "ok", strings.Join(parts, "; ")+" (all busy: use --wait to queue)", "")
	default:
		add("gpus", "ok", strings.Join(parts, "; "), "")
	}
	return out, serverVersion
}

// transportSecurity says how the CLI's traffic to the server is
// protected; plain HTTP is fine only to this machine.
func transportSecurity(client *sdk.Client) (string, bool) {
	if client.URL.Scheme == "https" {
		if client.CAFile != "" {
			return "TLS verified with CA file " + client.CAFile, true
		}
		return "TLS verified with the system's CAs", true
	}
	host := client.URL.Hostname()
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return "plain HTTP on this machine's loopback", true
	}
	return "but over plain HTTP: your token and shells cross the network unencrypted", false
}

// healthz asks the server's unauthenticated health endpoint, and returns
// the version it reports ("" from a server too old to say).
func (d doctor) healthz(ctx context.Context, client *sdk.Client) (string, error) {
	base := client.URL.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.HTTP.Do(req)
	if err != nil {
		if untrusted := client.ReachError(err); sdk.IsUntrusted(untrusted) {
			return "", untrusted
		}
		return "", fmt.Errorf("cannot reach %s: %w", base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var health struct {
		Version string `json:"version"`
	}
	_ = json.Unmarshal(body, &health) // an older server answers without it
	if resp.StatusCode != http.StatusOK {
		return health.Version, fmt.Errorf("%s/healthz answered %s", base, resp.Status)
	}
	return health.Version, nil
}

// checkSSHConfig looks for the block `devgpu config-ssh` writes.
func (d doctor) checkSSHConfig() checkResult {
	r := checkResult{Check: "ssh-config", Status: "FAIL", Fix: "run `devgpu config-ssh` to use ssh, scp, rsync and VS Code Remote-SSH"}
	if d.sshConfigPath == "" {
		r.Detail = "cannot find your home directory"
		return r
	}
	f, err := os.Open(d.sshConfigPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			r.Detail = d.sshConfigPath + " does not exist"
		} else {
			r.Detail = err.Error()
		}
		return r
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == sshConfigMarker {
			r.Status, r.Detail, r.Fix = "ok", d.sshConfigPath+" has the devgpu block", ""
			return r
		}
	}
	if err := sc.Err(); err != nil {
		r.Detail = fmt.Sprintf("read %s: %v", d.sshConfigPath, err)
		return r
	}
	r.Detail = d.sshConfigPath + " has no devgpu block"
	return r
}

// runtimeCheck says where the server runs sessions and warns of what that
// runtime cannot enforce, such as the local runtime shared by several users.
func runtimeCheck(me sdk.Whoami) checkResult {
	r := checkResult{Check: "runtime", Status: "ok", Detail: "sessions run on the " + me.Runtime + " runtime"}
	if len(me.RuntimeWarnings) > 0 {
		r.Status = "WARN"
		r.Detail += ": " + strings.Join(me.RuntimeWarnings, "; ")
		r.Fix = "ask the server's admin to run it with --runtime oci"
	}
	return r
}
