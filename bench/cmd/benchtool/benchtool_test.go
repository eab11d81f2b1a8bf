package main

import (
	"bytes"
	"context"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   []float64
		q    float64
		want float64
	}{
		{[]float64{5}, 0.5, 5},
		{[]float64{1, 2, 3, 4}, 0.5, 2.5},
		{[]float64{1, 2, 3, 4, 5}, 0.5, 3},
		{[]float64{1, 2, 3, 4, 5}, 0.95, 4.8},
		{[]float64{1, 2, 3, 4, 5}, 0, 1},
		{[]float64{1, 2, 3, 4, 5}, 1, 5},
	}
	for _, tt := range tests {
		if got := percentile(tt.in, tt.q); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("percentile(%v, %v) = %v, want %v", tt.in, tt.q, got, tt.want)
		}
	}
	if got := percentile(nil, 0.5); !math.IsNaN(got) {
		t.Errorf("percentile(nil) = %v, want NaN", got)
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1G", 1 << 30, true},
		{"512K", 512 << 10, true},
		{"3m", 3 << 20, true},
		{"1073741824", 1 << 30, true},
		{"", 0, false},
		{"G", 0, false},
		{"-1", 0, false},
		{"1T", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestReportRatios(t *testing.T) {
	t.Parallel()
	results := map[string]Result{
		devgpuRunTrue:    {Name: devgpuRunTrue, Kind: kindLatency, N: 50, MedianMS: 20},
		srunTrue:         {Name: srunTrue, Kind: kindLatency, N: 50, MedianMS: 40},
		sshTrue:          {Name: sshTrue, Kind: kindLatency, N: 50, MedianMS: 60},
		devgpuConcurrent: {Name: devgpuConcurrent, Kind: kindConcurrent, N: 200, JobsPerSec: 300},
		srunConcurrent:   {Name: srunConcurrent, Kind: kindConcurrent, N: 200, JobsPerSec: 50, Failures: 1, LastError: "boom"},
	}
	out := renderReport(results, false)
	for _, want := range []string{
		"| 0.50× | ≤ 0.8× | yes |", // 20/40 against srun
		"| 0.33× | ≤ 0.25× | no |", // 20/60 against ssh
		"| 6.00× | ≥ 5× | yes* |",  // 300/50, and srun had a failure
		"srun_concurrent: 1 failed; last: boom",
		"`srun --pty bash` (median) | not measured | not measured |  | ≤ 0.8× | n/a |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestReportConsoleBesideShell(t *testing.T) {
	t.Parallel()
	results := map[string]Result{
		devgpuKeystroke:  {Name: devgpuKeystroke, Kind: kindKeystroke, N: 300, MedianMS: 0.5, P99MS: 1.2},
		consoleKeystroke: {Name: consoleKeystroke, Kind: kindKeystroke, N: 300, MedianMS: 1.5, P99MS: 3.6},
	}
	out := renderReport(results, true)
	for _, want := range []string{
		"| keystroke echo, browser terminal vs `devgpu shell` (p99) | 3.60 ms | 1.20 ms | 3.00× | — | — |",
		"| keystroke echo round trip (OpenSSH beside it) (p99) | 1.20 ms | not measured |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// -measured leaves out the targets of which nothing ran.
	if strings.Contains(out, "srun") || strings.Contains(out, "admissions (create+end)") {
		t.Errorf("report with measuredOnly shows targets nothing measured:\n%s", out)
	}
	if all := renderReport(results, false); !strings.Contains(all, "`devgpu run -- true` vs `srun --gres=gpu:t4:1 true` (median) | not measured") {
		t.Errorf("report without measuredOnly lacks the unmeasured targets:\n%s", all)
	}
}

func TestMeasureRoundTrip(t *testing.T) {
	t.Parallel()
	out := filepath.Join(t.TempDir(), "results.jsonl")
	ctx := context.Background()
	var discard bytes.Buffer
	steps := [][]string{
		{"latency", "-name", "lat", "-out", out, "-n", "3", "-warmup", "0", "--", "true"},
		{"latency", "-name", "fail", "-out", out, "-n", "2", "-warmup", "0", "--", "false"},
		{"throughput", "-name", "tp", "-out", out, "-n", "1", "-expect-bytes", "1M", "--", "head", "-c", "1M", "/dev/zero"},
		{"concurrent", "-name", "conc", "-out", out, "-jobs", "6", "-workers", "3", "--", "true"},
		{"prompt", "-name", "pr", "-out", out, "-n", "1", "-warmup", "0", "-timeout", "10s", "--", "sh"},
		{"keystroke", "-name", "ks", "-out", out, "-n", "5", "-warmup", "1", "-timeout", "10s", "--", "sh"},
	}
	for _, args := range steps {
		if err := run(ctx, args, &discard, &discard); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	var rep bytes.Buffer
	if err := run(ctx, []string{"report", "-in", out}, &rep, &discard); err != nil {
		t.Fatal(err)
	}
	f, err := readResultsFile(out)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, ok func(Result) bool) {
		t.Helper()
		if r, found := f[name]; !found || !ok(r) {
			t.Errorf("%s: unexpected %+v", name, r)
		}
	}
	check("lat", func(r Result) bool { return r.N == 3 && r.Failures == 0 && r.MedianMS > 0 })
	check("fail", func(r Result) bool { return r.N == 0 && r.Failures == 2 && r.LastError != "" })
	check("tp", func(r Result) bool { return r.N == 1 && r.Bytes == 1<<20 && r.E2EBytesPerSec > 0 })
	check("conc", func(r Result) bool { return r.N == 6 && r.Workers == 3 && r.JobsPerSec > 0 })
	check("pr", func(r Result) bool {
		return r.N == 1 && r.Failures == 0 && r.MedianMS < float64(10*time.Second/time.Millisecond)
	})
	check("ks", func(r Result) bool { return r.N == 5 && r.Failures == 0 })
	if !strings.Contains(rep.String(), "| lat | `true` | 3 | 0 |") {
		t.Errorf("report lacks the lat row:\n%s", rep.String())
	}
}
