package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Kinds of measurement, one per subcommand.
const (
	kindLatency    = "latency"
	kindPrompt     = "prompt"
	kindKeystroke  = "keystroke"
	kindThroughput = "throughput"
	kindConcurrent = "concurrent"
	kindAdmissions = "admissions"
)

// Result is one measurement, written as one JSON line. Durations are in
// milliseconds and rates per second, so the file reads without a decoder.
type Result struct {
	Name     string    `json:"name"`
	Kind     string    `json:"kind"`
	Cmd      []string  `json:"cmd"`
	Label    string    `json:"label,omitempty"` // the command as the report shows it
	Time     time.Time `json:"time"`
	N        int       `json:"n"`        // runs (or keystrokes, or jobs) that succeeded
	Failures int       `json:"failures"` // runs that failed or timed out
	// LastError is the last failure, with the tail of the command's stderr.
	LastError string `json:"last_error,omitempty"`

	// Distribution of the successful samples, in milliseconds.
	MedianMS float64 `json:"median_ms,omitempty"`
	P95MS    float64 `json:"p95_ms,omitempty"`
	P99MS    float64 `json:"p99_ms,omitempty"`
	MinMS    float64 `json:"min_ms,omitempty"`
	MaxMS    float64 `json:"max_ms,omitempty"`
	MeanMS   float64 `json:"mean_ms,omitempty"`

	// Throughput: bytes read per run, the median stream rate (first byte to
	// EOF) and the median end-to-end rate (start to exit).
	Bytes             int64   `json:"bytes,omitempty"`
	StreamBytesPerSec float64 `json:"stream_bytes_per_s,omitempty"`
	E2EBytesPerSec    float64 `json:"e2e_bytes_per_s,omitempty"`

	// Concurrent: jobs per second over the wall time of the whole batch.
	Workers    int     `json:"workers,omitempty"`
	WallS      float64 `json:"wall_s,omitempty"`
	JobsPerSec float64 `json:"jobs_per_s,omitempty"`

	SamplesMS []float64 `json:"samples_ms,omitempty"`

	// Admissions: N is the create+end cycles that succeeded, the
	// distribution is that of their creates (agent start included),
	// Failures the calls that failed other than by a refusal.
	Engine                  string         `json:"engine,omitempty"`
	Clients                 int            `json:"clients,omitempty"`
	Users                   int            `json:"users,omitempty"`
	Projects                int            `json:"projects,omitempty"`
	Caps                    string         `json:"caps,omitempty"`
	AdmissionsPerSec        float64        `json:"admissions_per_s,omitempty"`
	RefusedN                int            `json:"refused,omitempty"`
	RefusalsPerSec          float64        `json:"refusals_per_s,omitempty"`
	Refusals                map[string]int `json:"refusals,omitempty"` // by reason
	StopMedianMS            float64        `json:"stop_median_ms,omitempty"`
	StopP95MS               float64        `json:"stop_p95_ms,omitempty"`
	RefuseMedianMS          float64        `json:"refuse_median_ms,omitempty"`
	ServerCPUMSPerAdmission float64        `json:"server_cpu_ms_per_admission,omitempty"`
	AgentCPUMSPerAdmission  float64        `json:"agent_cpu_ms_per_admission,omitempty"`
	StoreCPUMSPerAdmission  float64        `json:"store_cpu_ms_per_admission,omitempty"` // PostgreSQL's processes
	LeftRunning             int            `json:"left_running,omitempty"`               // ended by the admin after the run
	// The machine during the run: how busy (all CPUs), and the CPU seconds
	// of everything but the server, its agents and benchtool: other work.
	MachineBusyPct float64 `json:"machine_busy_pct,omitempty"`
	OtherCPUS      float64 `json:"other_cpu_s,omitempty"`
	// Violations is nil when the audit log could not be replayed.
	Violations        *int     `json:"violations,omitempty"`
	ViolationExamples []string `json:"violation_examples,omitempty"`
	AuditEvents       int      `json:"audit_events,omitempty"`
	AuditStarts       int      `json:"audit_starts,omitempty"`
	AuditEnds         int      `json:"audit_ends,omitempty"`
	Peaks             string   `json:"peaks,omitempty"` // peak concurrent GPUs per project, user, type
	Anomalies         []string `json:"anomalies,omitempty"`
}

// setSamples fills the distribution fields from samples.
func (r *Result) setSamples(samples []time.Duration) {
	ms := make([]float64, len(samples))
	for i, d := range samples {
		ms[i] = float64(d) / float64(time.Millisecond)
	}
	r.SamplesMS = ms
	s := summarize(ms)
	r.MedianMS, r.P95MS, r.P99MS = s.median, s.p95, s.p99
	r.MinMS, r.MaxMS, r.MeanMS = s.min, s.max, s.mean
}

type summary struct{ median, p95, p99, min, max, mean float64 }

// summarize computes the distribution of xs (unsorted, not modified).
func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	return summary{
		median: percentile(s, 0.50),
		p95:    percentile(s, 0.95),
		p99:    percentile(s, 0.99),
		min:    s[0],
		max:    s[len(s)-1],
		mean:   sum / float64(len(s)),
	}
}

// percentile returns the q-quantile (0..1) of sorted, interpolating linearly
// between the closest ranks (the definition numpy and R use by default).
func percentile(sorted []float64, q float64) float64 {
	switch len(sorted) {
	case 0:
		return math.NaN()
	case 1:
		return sorted[0]
	}
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	frac := pos - float64(lo)
	return sorted[lo] + (sorted[hi]-sorted[lo])*frac
}

// writeResult appends r as one JSON line to path, or writes it to stdout
// when path is empty.
func writeResult(path string, stdout io.Writer, r Result) error {
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode result %s: %w", r.Name, err)
	}
	line = append(line, '\n')
	if path == "" {
		_, err = stdout.Write(line)
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open results: %w", err)
	}
	if _, err := f.Write(line); err != nil {
		f.Close()
		return fmt.Errorf("write results: %w", err)
	}
	return f.Close()
}

// readResults reads a results file; a later result with the same name
// replaces an earlier one.
func readResults(r io.Reader) (map[string]Result, error) {
	out := make(map[string]Result)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var res Result
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			return nil, fmt.Errorf("results line %d: %w", line, err)
		}
		out[res.Name] = res
	}
	return out, sc.Err()
}

// summaryLine is the one line each measuring subcommand prints on stderr.
func summaryLine(r Result) string {
	s := fmt.Sprintf("%-28s n=%d failed=%d", r.Name, r.N, r.Failures)
	switch r.Kind {
	case kindThroughput:
		s += fmt.Sprintf(" stream=%.0f MB/s e2e=%.0f MB/s", r.StreamBytesPerSec/1e6, r.E2EBytesPerSec/1e6)
	case kindConcurrent:
		s += fmt.Sprintf(" %.1f jobs/s (wall %.2fs, job median %.1f ms, p95 %.1f ms)", r.JobsPerSec, r.WallS, r.MedianMS, r.P95MS)
	case kindAdmissions:
		s += fmt.Sprintf(" %.1f admissions/s (wall %.2fs, create median %.1f ms, end median %.1f ms); refused %d (%s); violations %s",
			r.AdmissionsPerSec, r.WallS, r.MedianMS, r.StopMedianMS, r.RefusedN, refusalList(r.Refusals), violationText(r))
	default:
		s += fmt.Sprintf(" median=%.2f ms p95=%.2f ms p99=%.2f ms", r.MedianMS, r.P95MS, r.P99MS)
	}
	if r.LastError != "" {
		s += "\n  last error: " + r.LastError
	}
	return s
}

// readResultsFile reads the results file at path.
func readResultsFile(path string) (map[string]Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readResults(f)
}

// refusalList prints refusals by reason, most frequent first.
func refusalList(m map[string]int) string {
	type kv struct {
		k string
		v int
	}
	var l []kv
	for k, v := range m {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v || l[i].v == l[j].v && l[i].k < l[j].k })
	parts := make([]string, len(l))
	for i, x := range l {
		parts[i] = fmt.Sprintf("%s %d", x.k, x.v)
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// violationText is the violation count, or why there is none.
func violationText(r Result) string {
	if r.Violations == nil {
		return "not checked"
	}
	return strconv.Itoa(*r.Violations)
}
