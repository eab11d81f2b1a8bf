package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// admissionsOptions are the flags of `benchtool admissions`.
type admissionsOptions struct {
	name, label, out string
	url, token       string
	config           string
	engine           string
	clients          int
	users            int
	projects         int
	duration         time.Duration
	timeout          time.Duration
	gpuType          string
	maxGPUs          int
	maxPerUser       int
	quota            int
	serverPID        int
	prefix           string
	backoff          time.Duration
	storePID         int
}

// runAdmissions measures admissions (create + end) per second through the
// HTTP API: -clients goroutines, spread over -users users and -projects
// projects made for the run, each creating a session and ending it again
// as fast as it can for -duration, against small caps (max_gpus and
// max_gpus_per_user on every project, an org quota on the GPU type). Then
// it reads the audit log, in which every session.start and session.end is
// written in the transaction that reserves or frees the GPUs, and replays
// it: the GPUs held per project, per user in a project and per type must
// never exceed the caps, and no GPU may be held twice. The server must be
// otherwise idle (no active session), since the replay only sees the
// run's projects.
func runAdmissions(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("admissions", stderr)
	var o admissionsOptions
	fs.StringVar(&o.name, "name", "", "label of this measurement in the results `file` (required)")
	fs.StringVar(&o.label, "label", "", "what the report shows in the command column (default: the settings)")
	fs.StringVar(&o.out, "out", "", "append the result as a JSON line to this `file` (default: stdout)")
	fs.StringVar(&o.url, "url", "", "server URL (default: from -config)")
	fs.StringVar(&o.token, "token", "", "an org admin's token (default: from -config)")
	fs.StringVar(&o.config, "config", os.Getenv("DEVGPU_CONFIG"), "CLI config `file` to take -url and -token from")
	fs.StringVar(&o.engine, "engine", "", "the store engine, for the report (e.g. SQLite, PostgreSQL)")
	fs.IntVar(&o.clients, "clients", 64, "concurrent clients")
	fs.IntVar(&o.users, "users", 8, "users the clients are spread over (each a member of every project)")
	fs.IntVar(&o.projects, "projects", 2, "projects the clients are spread over")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long clients start new create+end cycles")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "limit for one API call")
	fs.StringVar(&o.gpuType, "gpu", "t4", "GPU type to ask for, and to put the org quota on")
	fs.IntVar(&o.maxGPUs, "max-gpus", 8, "max_gpus of every project")
	fs.IntVar(&o.maxPerUser, "max-gpus-per-user", 2, "max_gpus_per_user of every project")
	fs.IntVar(&o.quota, "quota", 12, "org quota on -gpu (0: leave the org policy alone)")
	fs.IntVar(&o.serverPID, "server-pid", 0, "the server's `pid`, to record its CPU time (and its agents') per admission")
	fs.IntVar(&o.storePID, "store-pid", 0, "the database server's `pid` (PostgreSQL's postmaster), to record its CPU time per admission")
	fs.DurationVar(&o.backoff, "refusal-backoff", 0, "pause after a refusal before the next create (0: none, every client retries at once)")
	fs.StringVar(&o.prefix, "prefix", "", "prefix of the users and projects made for the run (default: adm + the time)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("admissions: unexpected arguments %q", fs.Args())
	}
	if o.name == "" {
		return errors.New("admissions: -name is required")
	}
	if o.clients < 1 || o.users < 1 || o.projects < 1 || o.duration <= 0 {
		return errors.New("admissions: -clients, -users, -projects and -duration must be positive")
	}
	if err := o.resolveServer(); err != nil {
		return err
	}
	if o.prefix == "" {
		o.prefix = "adm" + strconv.FormatInt(time.Now().UnixMilli()%(36*36*36*36*36*36), 36)
	}
	if o.label == "" {
		o.label = fmt.Sprintf("%d clients, %d users, %d projects: create+end via the API", o.clients, o.users, o.projects)
	}
	res, err := admissions(ctx, o, stderr)
	if res.Name == "" {
		return err
	}
	fmt.Fprintln(stderr, summaryLine(res))
	if werr := writeResult(o.out, stdout, res); werr != nil {
		return werr
	}
	return err
}

// resolveServer fills -url and -token from the CLI config where not given.
func (o *admissionsOptions) resolveServer() error {
	if o.url != "" && o.token != "" {
		return nil
	}
	if o.config == "" {
		return errors.New("admissions: give -url and -token, or -config (or set DEVGPU_CONFIG)")
	}
	b, err := os.ReadFile(o.config)
	if err != nil {
		return fmt.Errorf("admissions: %w", err)
	}
	var c struct{ URL, Token string }
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("admissions: config %s: %w", o.config, err)
	}
	if o.url == "" {
		o.url = c.URL
	}
	if o.token == "" {
		o.token = c.Token
	}
	if o.url == "" || o.token == "" {
		return fmt.Errorf("admissions: config %s has no url or token", o.config)
	}
	return nil
}

// clientStats is what one client counted; merged at the end.
type clientStats struct {
	admitted  int // create and end both succeeded
	errors    int
	lastError string
	refused   map[string]int
	createLat []time.Duration // admitted creates
	stopLat   []time.Duration
	refuseLat []time.Duration
	leftovers []string // sessions created and not ended by the client
}

// admissions runs the benchmark. It returns a Result with a name whenever
// the run itself happened, and an error when it failed or found violations.
func admissions(ctx context.Context, o admissionsOptions, stderr io.Writer) (Result, error) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "admissions: "+format+"\n", args...)
	}
	// One keep-alive pool for every client, as an API client would have.
	httpc := &http.Client{Transport: &http.Transport{
		MaxIdleConns: 4 * o.clients, MaxIdleConnsPerHost: 4 * o.clients,
		IdleConnTimeout: time.Minute, DisableCompression: true,
	}}
	defer httpc.CloseIdleConnections()
	admin, err := sdk.NewClient(o.url, o.token)
	if err != nil {
		return Result{}, err
	}
	admin.HTTP = httpc
	setup, cancelSetup := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelSetup()

	who, err := admin.Whoami(setup)
	if err != nil {
		return Result{}, fmt.Errorf("admissions: %w", err)
	}
	if !who.OrgAdmin {
		return Result{}, fmt.Errorf("admissions: %s is not an org admin; the run creates users and sets the org quota", who.User)
	}
	all, err := admin.ListSessions(setup, true)
	if err != nil {
		return Result{}, fmt.Errorf("admissions: %w", err)
	}
	for _, s := range all {
		if s.Active() {
			return Result{}, fmt.Errorf("admissions: session %s (project %s) is %s; the replay needs a server with no active session", s.ID, s.Project, s.State)
		}
	}
	pools, err := admin.GPUs(setup)
	if err != nil {
		return Result{}, fmt.Errorf("admissions: %w", err)
	}
	c := caps{GPUType: o.gpuType, MaxGPUs: o.maxGPUs, MaxGPUsPerUser: o.maxPerUser, Quota: o.quota}
	for _, p := range pools {
		if p.Type == o.gpuType {
			c.Pool += p.Total
		}
	}
	if c.Pool == 0 {
		return Result{}, fmt.Errorf("admissions: the server has no %s GPU (start it with --gpus %s:16)", o.gpuType, o.gpuType)
	}
	// The audit read after the run starts here; the server runs on this
	// host's clock. Two seconds of slack: the API takes whole seconds.
	since := time.Now().Add(-2 * time.Second)

	if o.quota > 0 {
		orig, err := admin.OrgPolicy(setup)
		if err != nil {
			return Result{}, fmt.Errorf("admissions: %w", err)
		}
		pol := orig
		pol.Quotas = []sdk.Quota{{GPUType: o.gpuType, Max: o.quota}}
		for _, q := range orig.Quotas {
			if q.GPUType != o.gpuType {
				pol.Quotas = append(pol.Quotas, q)
			}
		}
		if _, err := admin.SetOrgPolicy(setup, pol); err != nil {
			return Result{}, fmt.Errorf("admissions: set the org quota: %w", err)
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if _, err := admin.SetOrgPolicy(rctx, orig); err != nil {
				logf("could not restore the org policy: %v", err)
			}
		}()
	}
	projects := make([]string, o.projects)
	enabled, dedicated := true, sdk.ModeDedicated
	for i := range projects {
		projects[i] = fmt.Sprintf("%s-p%d", o.prefix, i)
		if _, err := admin.CreateProject(setup, sdk.ProjectCreate{Name: projects[i]}); err != nil {
			return Result{}, fmt.Errorf("admissions: create project %s: %w", projects[i], err)
		}
		upd := sdk.ProjectUpdate{Settings: sdk.ProjectSettings{
			GPUEnabled: &enabled, MaxGPUs: &o.maxGPUs, MaxGPUsPerUser: &o.maxPerUser, ShellMode: &dedicated,
		}}
		if _, err := admin.UpdateProject(setup, projects[i], upd); err != nil {
			return Result{}, fmt.Errorf("admissions: set the caps of project %s: %w", projects[i], err)
		}
	}
	users := make([]string, o.users)
	tokens := make([]string, o.users)
	for i := range users {
		users[i] = fmt.Sprintf("%s-u%02d", o.prefix, i)
		u, err := admin.CreateUser(setup, sdk.UserCreate{Name: users[i]})
		if err != nil {
			return Result{}, fmt.Errorf("admissions: create user %s: %w", users[i], err)
		}
		tokens[i] = u.Token
		for _, p := range projects {
			if _, err := admin.SetMember(setup, p, users[i], "developer"); err != nil {
				return Result{}, fmt.Errorf("admissions: add %s to %s: %w", users[i], p, err)
			}
		}
	}
	defer func() { // the users go on existing (the audit names them), disabled
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		yes := true
		for _, u := range users {
			if _, err := admin.UpdateUser(rctx, u, sdk.UserUpdate{Disabled: &yes}); err != nil {
				logf("could not disable user %s: %v", u, err)
				return
			}
		}
	}()
	logf("%d clients as %d users in %d projects (%s), caps: max_gpus %d, max_gpus_per_user %d, %s quota %d, pool %d; for %s",
		o.clients, o.users, o.projects, strings.Join(projects, ", "), o.maxGPUs, o.maxPerUser, o.gpuType, o.quota, c.Pool, o.duration)

	cpu0, cpuErr := procCPU(o.serverPID)
	store0, storeErr := treeCPU(o.storePID)
	mach0, self0 := machineCPU(), selfCPU()
	stats := make([]clientStats, o.clients)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(o.duration)
	for i := range stats {
		cl := &sdk.Client{URL: admin.URL, Token: tokens[i%o.users], HTTP: httpc}
		project := projects[(i/o.users)%o.projects]
		st := &stats[i]
		st.refused = map[string]int{}
		wg.Go(func() { admissionLoop(ctx, cl, project, o, deadline, st) })
	}
	wg.Wait()
	wall := time.Since(start)
	cpu1, _ := procCPU(o.serverPID)
	store1, _ := treeCPU(o.storePID)
	mach1, self1 := machineCPU(), selfCPU()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	res := Result{
		Name: o.name, Kind: kindAdmissions, Label: o.label, Time: start.UTC(), Engine: o.engine,
		Cmd:     []string{"benchtool", "admissions", "-clients", strconv.Itoa(o.clients), "-users", strconv.Itoa(o.users), "-projects", strconv.Itoa(o.projects), "-duration", o.duration.String()},
		Clients: o.clients, Users: o.users, Projects: o.projects, WallS: wall.Seconds(),
		Caps:     fmt.Sprintf("max_gpus %d, max_gpus_per_user %d, org quota %s %d, pool %d", o.maxGPUs, o.maxPerUser, o.gpuType, o.quota, c.Pool),
		Refusals: map[string]int{},
	}
	var createLat, stopLat, refuseLat []time.Duration
	var leftovers []string
	for _, st := range stats {
		res.N += st.admitted
		res.Failures += st.errors
		if st.lastError != "" {
			res.LastError = st.lastError
		}
		for k, v := range st.refused {
			res.Refusals[k] += v
			res.RefusedN += v
		}
		createLat = append(createLat, st.createLat...)
		stopLat = append(stopLat, st.stopLat...)
		refuseLat = append(refuseLat, st.refuseLat...)
		leftovers = append(leftovers, st.leftovers...)
	}
	res.setSamples(createLat)
	res.SamplesMS = nil // thousands of them; the distribution is enough
	res.AdmissionsPerSec = float64(res.N) / wall.Seconds()
	res.RefusalsPerSec = float64(res.RefusedN) / wall.Seconds()
	ss := summarize(durationsMS(stopLat))
	res.StopMedianMS, res.StopP95MS = ss.median, ss.p95
	res.RefuseMedianMS = summarize(durationsMS(refuseLat)).median
	if mach0.total > 0 && mach1.total > mach0.total {
		busy := mach1.busy - mach0.busy
		res.MachineBusyPct = 100 * busy / (mach1.total - mach0.total)
		others := busy - (self1 - self0)
		if cpuErr == nil && o.serverPID > 0 {
			others -= (cpu1.self - cpu0.self) + (cpu1.children - cpu0.children)
		}
		if storeErr == nil && o.storePID > 0 {
			others -= store1 - store0
		}
		res.OtherCPUS = max(others, 0)
	}
	if storeErr == nil && o.storePID > 0 && res.N > 0 {
		res.StoreCPUMSPerAdmission = 1000 * (store1 - store0) / float64(res.N)
	}
	if cpuErr == nil && o.serverPID > 0 && res.N > 0 {
		res.ServerCPUMSPerAdmission = 1000 * (cpu1.self - cpu0.self) / float64(res.N)
		res.AgentCPUMSPerAdmission = 1000 * (cpu1.children - cpu0.children) / float64(res.N)
	}

	// Whatever a client could not end (a timeout) is ended now, so that
	// the log is complete and the server is left idle.
	cleanup, cancelCleanup := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancelCleanup()
	stopped, err := stopLeftovers(cleanup, admin, projects, leftovers)
	res.LeftRunning = stopped
	if err != nil {
		return res, fmt.Errorf("admissions: end the sessions left running: %w", err)
	}

	events, err := readAudit(cleanup, admin, projects, since)
	if err != nil {
		res.LastError = err.Error()
		return res, fmt.Errorf("admissions: %w", err)
	}
	rep := replay(events, c)
	logf("%s", rep)
	v := rep.Violations
	res.Violations = &v
	res.ViolationExamples = rep.Examples
	res.AuditEvents = len(events)
	res.AuditStarts, res.AuditEnds = rep.Starts, rep.Ends
	res.Peaks = fmt.Sprintf("project %d, user %d, %s %d", rep.PeakProject, rep.PeakUser, o.gpuType, rep.PeakType)
	res.Anomalies = rep.Anomalies
	if rep.OrderInversions > 0 {
		res.Anomalies = append(res.Anomalies, fmt.Sprintf("%d audit events whose id order differs from their time order", rep.OrderInversions))
	}
	if rep.StillActive > 0 {
		res.Anomalies = append(res.Anomalies, fmt.Sprintf("%d sessions started without an end in the log", rep.StillActive))
	}
	if rep.Starts < res.N {
		res.Anomalies = append(res.Anomalies, fmt.Sprintf("clients counted %d admissions, the log has %d starts", res.N, rep.Starts))
	}
	switch {
	case rep.Violations > 0:
		return res, fmt.Errorf("admissions: %d cap violations, first: %s", rep.Violations, rep.Examples[0])
	case len(res.Anomalies) > 0:
		return res, fmt.Errorf("admissions: the audit log does not add up: %s", strings.Join(res.Anomalies, "; "))
	}
	return res, nil
}

// admissionLoop is one client: create, end, again, until the deadline.
func admissionLoop(ctx context.Context, cl *sdk.Client, project string, o admissionsOptions, deadline time.Time, st *clientStats) {
	for time.Now().Before(deadline) && ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, o.timeout)
		t0 := time.Now()
		s, err := cl.CreateSession(rctx, sdk.CreateSessionRequest{Project: project, GPUType: o.gpuType}, nil)
		d := time.Since(t0)
		cancel()
		if err != nil {
			if reason, ok := refusalReason(err); ok {
				st.refused[reason]++
				st.refuseLat = append(st.refuseLat, d)
				if o.backoff > 0 {
					time.Sleep(o.backoff)
				}
				continue
			}
			if ctx.Err() != nil {
				return
			}
			st.errors++
			st.lastError = "create: " + err.Error()
			// A server that fails at once must not turn this into a busy loop.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		st.createLat = append(st.createLat, d)
		rctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), o.timeout)
		t0 = time.Now()
		_, err = cl.StopSession(rctx, s.ID)
		cancel()
		if err != nil {
			st.errors++
			st.lastError = "end " + s.ID + ": " + err.Error()
			st.leftovers = append(st.leftovers, s.ID)
			continue
		}
		st.stopLat = append(st.stopLat, time.Since(t0))
		st.admitted++
	}
}

// refusalReason names an admission refusal by the limit its message
// names (the API answers 409 with the admission's message); ok is false
// for errors that are not refusals.
func refusalReason(err error) (reason string, ok bool) {
	var e *sdk.Error
	if !errors.As(err, &e) {
		return "", false
	}
	msg := e.Problem.Detail
	switch {
	case strings.Contains(msg, "GPUs in project") && strings.Contains(msg, "of your"):
		return "user_cap", true
	case strings.Contains(msg, "of its") && strings.Contains(msg, "max_gpus"):
		return "project_cap", true
	case strings.Contains(msg, "quota is used up"):
		return "org_quota", true
	case strings.Contains(msg, "GPUs are in use"):
		return "capacity", true
	case strings.Contains(msg, "requests are waiting"):
		return "queue", true
	case e.Status == http.StatusConflict || e.Status == http.StatusForbidden:
		return fmt.Sprintf("other_%d", e.Status), true
	}
	return "", false
}

// stopLeftovers ends the sessions clients left behind, and any other
// active session in the run's projects; it returns how many it ended.
func stopLeftovers(ctx context.Context, admin *sdk.Client, projects, ids []string) (int, error) {
	all, err := admin.ListSessions(ctx, true)
	if err != nil {
		return 0, err
	}
	ours := map[string]bool{}
	for _, p := range projects {
		ours[p] = true
	}
	todo := map[string]bool{}
	for _, id := range ids {
		todo[id] = true
	}
	for _, s := range all {
		if s.Active() && ours[s.Project] {
			todo[s.ID] = true
		}
	}
	n := 0
	for id := range todo {
		s, err := admin.StopSession(ctx, id)
		if err != nil {
			return n, fmt.Errorf("session %s: %w", id, err)
		}
		if s.EndReason == sdk.ReasonAdmin {
			n++
		}
	}
	return n, nil
}

// auditLimit is how many events the server returns for one query at most
// (the newest ones).
const auditLimit = 10000

// readAudit reads the run's projects' audit logs from since on. Each
// project's log must begin with its project.create: otherwise the server
// kept only the newest events, and the replay would start half-way.
func readAudit(ctx context.Context, admin *sdk.Client, projects []string, since time.Time) ([]sdk.AuditEvent, error) {
	var all []sdk.AuditEvent
	for _, p := range projects {
		evs, err := admin.Audit(ctx, sdk.AuditFilter{Project: p, Since: since})
		if err != nil {
			return nil, fmt.Errorf("read the audit log of %s: %w", p, err)
		}
		if len(evs) == 0 || evs[0].Action != "project.create" {
			return nil, fmt.Errorf("the audit log of %s is incomplete (%d events read, at most %d per query): "+
				"spread the run over more -projects or shorten -duration", p, len(evs), auditLimit)
		}
		all = append(all, evs...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	return all, nil
}

type cpuTimes struct{ self, children float64 } // seconds

// procCPU reads a process's CPU time, its own and that of its waited-for
// children (the local runtime's agents and what they ran).
func procCPU(pid int) (cpuTimes, error) {
	if pid <= 0 {
		return cpuTimes{}, errors.New("no pid")
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	// Fields after the parenthesised name: state is field 3, utime 14.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return cpuTimes{}, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return cpuTimes{}, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	var v [4]float64
	for k := range v {
		n, err := strconv.ParseFloat(f[11+k], 64) // utime stime cutime cstime
		if err != nil {
			return cpuTimes{}, err
		}
		v[k] = n / clockTicks
	}
	return cpuTimes{self: v[0] + v[1], children: v[2] + v[3]}, nil
}

// treeCPU is the CPU time of a process, its children that it has waited
// for, and its live children: for PostgreSQL's postmaster, every backend,
// those that exited included.
func treeCPU(pid int) (float64, error) {
	root, err := procCPU(pid)
	if err != nil {
		return 0, err
	}
	total := root.self + root.children
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	parent := strconv.Itoa(pid)
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		// After the name: state, then the parent's pid.
		if f := strings.Fields(s[i+1:]); len(f) < 2 || f[1] != parent {
			continue
		}
		if c, err := procCPU(child); err == nil {
			total += c.self
		}
	}
	return total, nil
}

type machineTimes struct{ busy, total float64 } // seconds, all CPUs

// machineCPU reads the first line of /proc/stat: CPU time spent busy
// (not idle, not waiting for I/O) and in all, zero where unreadable.
func machineCPU() machineTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return machineTimes{}
	}
	var t machineTimes
	for i, x := range f[1:9] { // user nice system idle iowait irq softirq steal
		n, err := strconv.ParseFloat(x, 64)
		if err != nil {
			return machineTimes{}
		}
		t.total += n / clockTicks
		if i != 3 && i != 4 {
			t.busy += n / clockTicks
		}
	}
	return t
}

// selfCPU is this process's CPU time in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

func durationsMS(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Millisecond)
	}
	return out
}
