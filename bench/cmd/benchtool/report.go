package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
)

// Measurement names: the contract between compare.sh, which records them,
// and the report, which compares them.
const (
	devgpuRunTrue     = "devgpu_run_true"
	sshTrue           = "ssh_true"
	srunTrue          = "srun_true"
	devgpuShellPrompt = "devgpu_shell_prompt"
	srunPtyPrompt     = "srun_pty_prompt"
	sshPtyPrompt      = "ssh_pty_prompt"
	devgpuKeystroke   = "devgpu_shell_keystroke"
	sshKeystroke      = "ssh_keystroke"
	srunKeystroke     = "srun_keystroke"
	devgpuConcurrent  = "devgpu_run_wait_concurrent"
	srunConcurrent    = "srun_concurrent"
	devgpuBulk        = "devgpu_run_bulk"
	sshBulk           = "ssh_bulk"
	admissionsSQLite  = "devgpu_admissions_sqlite"
	admissionsPG      = "devgpu_admissions_postgres"
)

// The web console's terminal (bench/console/echo.mjs writes these): a key
// to its echo parsed by xterm.js, and to the frame that painted it; the
// page's WebSocket send of the key to the message with its echo; the same
// keys against xterm.js alone, echoing in the page (the floor).
const (
	consoleKeystroke             = "console_terminal_keystroke"
	consoleKeystrokePainted      = "console_terminal_keystroke_painted"
	consoleKeystrokeWebSocket    = "console_terminal_keystroke_websocket"
	consoleKeystrokeFloor        = "console_terminal_keystroke_floor"
	consoleKeystrokeFloorPainted = "console_terminal_keystroke_floor_painted"
)

// order is how the measurements table lists what it knows; others follow by name.
var order = []string{
	devgpuRunTrue, srunTrue, sshTrue,
	devgpuShellPrompt, srunPtyPrompt, sshPtyPrompt,
	devgpuKeystroke, sshKeystroke, srunKeystroke,
	consoleKeystroke, consoleKeystrokePainted, consoleKeystrokeWebSocket, consoleKeystrokeFloor, consoleKeystrokeFloorPainted,
	devgpuConcurrent, srunConcurrent,
	devgpuBulk, sshBulk,
	admissionsSQLite, admissionsPG,
}

// metric picks the number a target compares, and whether more is better.
// has, when set, says whether the result has the number at all.
type metric struct {
	label  string
	value  func(Result) float64
	unit   string
	higher bool
	has    func(Result) bool
	count  bool // a whole number, printed as one
}

var (
	medianMS   = metric{label: "median", value: func(r Result) float64 { return r.MedianMS }, unit: "ms"}
	p99MS      = metric{label: "p99", value: func(r Result) float64 { return r.P99MS }, unit: "ms"}
	jobsPerSec = metric{label: "jobs/s", value: func(r Result) float64 { return r.JobsPerSec }, unit: "jobs/s", higher: true}
	streamMBps = metric{label: "MB/s", value: func(r Result) float64 { return r.StreamBytesPerSec / 1e6 }, unit: "MB/s", higher: true}
	admPerSec  = metric{label: "admissions/s", value: func(r Result) float64 { return r.AdmissionsPerSec }, unit: "/s", higher: true}
	violations = metric{label: "replayed from the audit log", unit: "violations", count: true,
		value: func(r Result) float64 { return float64(*r.Violations) },
		has:   func(r Result) bool { return r.Violations != nil }}
)

// target is one row of the DESIGN.md performance targets: subject's metric
// divided by peer's must be at most (or, when the metric is higher-better,
// at least) limit. An absolute target bounds subject's metric itself; its
// peer, if any, is shown for comparison. A row with noLimit has no target:
// it shows the ratio alone.
type target struct {
	what     string
	subject  string
	peer     string
	metric   metric
	limit    float64
	absolute bool
	noLimit  bool
}

// targets are the rows of "Performance targets" in DESIGN.md that a
// side-by-side run can check.
var targets = []target{
	{what: "`devgpu run -- true` vs `srun --gres=gpu:t4:1 true`", subject: devgpuRunTrue, peer: srunTrue, metric: medianMS, limit: 0.8},
	{what: "`devgpu run -- true` vs `ssh host true`", subject: devgpuRunTrue, peer: sshTrue, metric: medianMS, limit: 0.25},
	{what: "time to a prompt, `devgpu shell` vs `srun --pty bash`", subject: devgpuShellPrompt, peer: srunPtyPrompt, metric: medianMS, limit: 0.8},
	{what: "200 × `run --wait -- true`, 16 submitters, vs srun", subject: devgpuConcurrent, peer: srunConcurrent, metric: jobsPerSec, limit: 5},
	{what: "bulk output, 1 GiB, vs OpenSSH", subject: devgpuBulk, peer: sshBulk, metric: streamMBps, limit: 1.0},
	{what: "keystroke echo round trip (OpenSSH beside it)", subject: devgpuKeystroke, peer: sshKeystroke, metric: p99MS, limit: 2, absolute: true},
	{what: "keystroke echo, browser terminal vs `devgpu shell`", subject: consoleKeystroke, peer: devgpuKeystroke, metric: p99MS, noLimit: true},
	{what: "admissions (create+end), 64 clients, SQLite", subject: admissionsSQLite, metric: admPerSec, limit: 1000, absolute: true},
	{what: "cap violations, SQLite", subject: admissionsSQLite, metric: violations, limit: 0, absolute: true},
	{what: "admissions (create+end), 64 clients, PostgreSQL", subject: admissionsPG, metric: admPerSec, limit: 1000, absolute: true},
	{what: "cap violations, PostgreSQL", subject: admissionsPG, metric: violations, limit: 0, absolute: true},
}

func runReport(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("report", stderr)
	in := fs.String("in", "", "results `file` (JSON lines); default stdin")
	measured := fs.Bool("measured", false, "leave out the targets of which nothing was measured")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var (
		results map[string]Result
		err     error
	)
	if *in != "" {
		results, err = readResultsFile(*in)
	} else {
		results, err = readResults(os.Stdin)
	}
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	_, err = io.WriteString(stdout, renderReport(results, *measured))
	return err
}

// renderReport returns the markdown: every measurement, then each target
// with its ratio (with measuredOnly, those of which something was measured).
func renderReport(results map[string]Result, measuredOnly bool) string {
	var b strings.Builder
	b.WriteString("### Measurements\n\n")
	b.WriteString("| measurement | command | n | failed | median | p95 | p99 | rate |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, name := range listOrder(results) {
		r := results[name]
		rate := ""
		switch r.Kind {
		case kindThroughput:
			rate = fmt.Sprintf("%.0f MB/s (end to end %.0f MB/s)", r.StreamBytesPerSec/1e6, r.E2EBytesPerSec/1e6)
		case kindConcurrent:
			rate = fmt.Sprintf("%.1f jobs/s (%d in %.2f s)", r.JobsPerSec, r.N, r.WallS)
		case kindAdmissions:
			rate = fmt.Sprintf("%.1f admissions/s (%d in %.2f s)", r.AdmissionsPerSec, r.N, r.WallS)
		}
		label := r.Label
		if label == "" {
			label = strings.Join(r.Cmd, " ")
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %s | %s | %s | %s |\n",
			name, mdCode(label), r.N, r.Failures,
			ms(r.MedianMS), ms(r.P95MS), ms(r.P99MS), rate)
	}
	b.WriteString("\nTimes are in milliseconds, end to end (prompt: spawn until a typed command has run; " +
		"keystroke: one key to its echo (browser terminal: to the echo parsed by xterm.js, or painted, or from the page's WebSocket send to the echo's message; floor: the same keys into xterm.js echoing by itself; bench/console/echo.mjs); concurrent: each job; admissions: each admitted create). MB/s is the stream rate, first byte to EOF.\n")
	b.WriteString(admissionsSection(results))

	b.WriteString("\n### Against the targets in DESIGN.md\n\n")
	b.WriteString("| target | devgpu | peer | ratio | wanted | met |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | :---: |\n")
	for _, t := range targets {
		_, subj := results[t.subject]
		_, peer := results[t.peer]
		if measuredOnly && !subj && !peer {
			continue
		}
		b.WriteString(targetRow(t, results))
	}
	var failed []string
	for _, name := range listOrder(results) {
		if r := results[name]; r.Failures > 0 {
			failed = append(failed, fmt.Sprintf("- %s: %d failed; last: %s", name, r.Failures, r.LastError))
		}
	}
	if len(failed) > 0 {
		b.WriteString("\nFailures (a figure marked * had some):\n\n" + strings.Join(failed, "\n") + "\n")
	}
	return b.String()
}

func targetRow(t target, results map[string]Result) string {
	op := "≤"
	if t.metric.higher {
		op = "≥"
	}
	wanted := fmt.Sprintf("%s %g×", op, t.limit)
	if t.absolute {
		wanted = fmt.Sprintf("%s %g %s", op, t.limit, t.metric.unit)
		if t.limit == 0 && !t.metric.higher {
			wanted = "0 " + t.metric.unit
		}
	}
	if t.noLimit {
		wanted = "—"
	}
	what := fmt.Sprintf("%s (%s)", t.what, t.metric.label)
	// cell shows a result's number; ok says there is one to compare.
	cell := func(name string) (string, float64, bool) {
		if name == "" {
			return "—", 0, false
		}
		r, found := results[name]
		switch {
		case !found:
			return "not measured", 0, false
		case t.metric.has != nil && !t.metric.has(r):
			return "not checked" + mark(r), 0, false
		case t.metric.has == nil && r.N == 0:
			return fmt.Sprintf("all %d failed", r.Failures), 0, false
		}
		v := t.metric.value(r)
		if t.metric.count {
			return fmt.Sprintf("%.0f %s", v, t.metric.unit) + mark(r), v, true
		}
		return fmt.Sprintf("%s %s", num(v), t.metric.unit) + mark(r), v, true
	}
	subjCell, sv, sok := cell(t.subject)
	peerCell, pv, pok := cell(t.peer)
	ratio, met := "", "n/a"
	if sok && pok && pv != 0 {
		ratio = fmt.Sprintf("%.2f×", sv/pv)
	}
	switch {
	case t.noLimit:
		met = "—"
	case t.absolute && sok:
		met = verdict(sv, t, results[t.subject])
	case !t.absolute && sok && pok && pv != 0 && sv != 0:
		met = verdict(sv/pv, t, results[t.subject], results[t.peer])
	case results[t.subject].Failures > 0:
		met = "no*" // it ran and failed
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s |\n", what, subjCell, peerCell, ratio, wanted, met)
}

// admissionsSection details the admissions runs, if any.
func admissionsSection(results map[string]Result) string {
	var names []string
	for _, name := range listOrder(results) {
		if results[name].Kind == kindAdmissions {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n### Admissions (API only: create + end, each session a real agent process on the local runtime)\n\n")
	b.WriteString("| measurement | store | clients / users / projects | admissions/s | create median / p95 | end median / p95 | refused (/s, by reason) | CPU / admission: server, agents, PostgreSQL | peak GPUs held | violations |\n")
	b.WriteString("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: |\n")
	var notes []string
	for _, name := range names {
		r := results[name]
		cpu := func(v float64) string {
			if v == 0 {
				return ""
			}
			return num(v) + " ms"
		}
		cpus := cpu(r.ServerCPUMSPerAdmission) + ", " + cpu(r.AgentCPUMSPerAdmission)
		if r.StoreCPUMSPerAdmission > 0 {
			cpus += ", " + cpu(r.StoreCPUMSPerAdmission)
		}
		fmt.Fprintf(&b, "| %s | %s | %d / %d / %d | %s | %s / %s ms | %s / %s ms | %d (%s/s: %s) | %s | %s | %s |\n",
			name, r.Engine, r.Clients, r.Users, r.Projects, num(r.AdmissionsPerSec)+mark(r),
			ms(r.MedianMS), ms(r.P95MS), ms(r.StopMedianMS), ms(r.StopP95MS),
			r.RefusedN, num(r.RefusalsPerSec), refusalList(r.Refusals),
			cpus, r.Peaks, violationText(r))
		if r.Caps != "" {
			notes = append(notes, fmt.Sprintf("%s: caps %s; %d audit events replayed (%d starts, %d ends)", name, r.Caps, r.AuditEvents, r.AuditStarts, r.AuditEnds))
		}
		if r.MachineBusyPct > 0 {
			notes = append(notes, fmt.Sprintf("%s: machine %.0f%% busy during the run; other work on it took %.2f CPU-s in those %.2f s", name, r.MachineBusyPct, r.OtherCPUS, r.WallS))
		}
		for _, v := range r.ViolationExamples {
			notes = append(notes, fmt.Sprintf("%s: violation: %s", name, v))
		}
		for _, a := range r.Anomalies {
			notes = append(notes, fmt.Sprintf("%s: %s", name, a))
		}
		if r.LeftRunning > 0 {
			notes = append(notes, fmt.Sprintf("%s: %d sessions a client could not end were ended by the admin after the run", name, r.LeftRunning))
		}
	}
	b.WriteString("\nAn admission is one create that started a session (its agent included) and its end, both answered. " +
		"Violations: the session.start and session.end events of the audit log, replayed in (time, id) order, " +
		"never hold more GPUs per project, per user in a project or per type than the caps, nor one GPU twice. " +
		"CPU per admission counts everything the process did in the run, the refusals between admissions included; " +
		"agents' CPU is the server's reaped children (the agents and what they ran), PostgreSQL's the postmaster's process tree.\n")
	if len(notes) > 0 {
		b.WriteString("\n- " + strings.Join(notes, "\n- ") + "\n")
	}
	return b.String()
}

// verdict says whether v meets the target, starred when a run failed.
func verdict(v float64, t target, results ...Result) string {
	ok := v <= t.limit
	if t.metric.higher {
		ok = v >= t.limit
	}
	s := "no"
	if ok {
		s = "yes"
	}
	for _, r := range results {
		if r.Failures > 0 {
			return s + "*"
		}
	}
	return s
}

func mark(r Result) string {
	if r.Failures > 0 {
		return "*"
	}
	return ""
}

func listOrder(results map[string]Result) []string {
	var names []string
	known := make(map[string]bool)
	for _, n := range order {
		known[n] = true
		if _, ok := results[n]; ok {
			names = append(names, n)
		}
	}
	var rest []string
	for n := range results {
		if !known[n] {
			rest = append(rest, n)
		}
	}
	sort.Strings(rest)
	return append(names, rest...)
}

func ms(v float64) string {
	if v == 0 || math.IsNaN(v) {
		return ""
	}
	return num(v)
}

// num prints with three significant digits or so: 0.412, 12.3, 190, 1234.
func num(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a < 1:
		return fmt.Sprintf("%.3f", v)
	case a < 10:
		return fmt.Sprintf("%.2f", v)
	case a < 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// mdCode renders s as inline code in a table cell.
func mdCode(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	if len(s) > 70 {
		s = s[:67] + "..."
	}
	return "`" + s + "`"
}
