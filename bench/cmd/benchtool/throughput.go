package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// runThroughput runs the command -n times, reading its stdout as fast as it
// comes, and records two rates per run: the stream rate (first byte to EOF,
// the transport alone) and the end-to-end rate (start to exit, set-up
// included). The result holds the medians.
func runThroughput(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("throughput", stderr)
	var c common
	c.register(fs, 5*time.Minute)
	n := fs.Int("n", 3, "measured runs")
	expect := fs.String("expect-bytes", "", "fail a run whose output is not exactly this `size` (e.g. 1G, 1073741824)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	want := int64(-1)
	if *expect != "" {
		v, err := parseSize(*expect)
		if err != nil {
			return fmt.Errorf("throughput: -expect-bytes: %w", err)
		}
		want = v
	}
	res := c.result(kindThroughput)
	var stream, e2e []float64
	var durations []time.Duration
	for i := 0; i < *n; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		cw := &countingWriter{}
		d, err := runOnce(ctx, c.argv, c.timeout, cw)
		bytes, first, last := cw.stats()
		if err == nil && want >= 0 && bytes != want {
			err = fmt.Errorf("read %d bytes, want %d", bytes, want)
		}
		if err == nil && bytes == 0 {
			err = fmt.Errorf("no output")
		}
		if err != nil {
			res.Failures++
			res.LastError = err.Error()
			continue
		}
		res.Bytes = bytes
		durations = append(durations, d)
		e2e = append(e2e, float64(bytes)/d.Seconds())
		if span := last.Sub(first); span > 0 {
			stream = append(stream, float64(bytes)/span.Seconds())
		}
	}
	res.N = len(durations)
	res.setSamples(durations)
	res.StreamBytesPerSec = median(stream)
	res.E2EBytesPerSec = median(e2e)
	fmt.Fprintln(stderr, summaryLine(res))
	return writeResult(c.out, stdout, res)
}

// countingWriter counts what is written to it and notes when the first and
// the last bytes arrived. exec copies the command's stdout pipe into it
// through ReadFrom, with a buffer large enough not to be the bottleneck.
type countingWriter struct {
	mu          sync.Mutex
	n           int64
	first, last time.Time
}

func (w *countingWriter) Write(p []byte) (int, error) {
	now := time.Now()
	w.mu.Lock()
	if w.n == 0 {
		w.first = now
	}
	w.n += int64(len(p))
	w.last = now
	w.mu.Unlock()
	return len(p), nil
}

// ReadFrom reads r to EOF with a 1 MiB buffer (io.Copy's default of 32 KiB
// costs a system call per 32 KiB at hundreds of MB/s).
func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			_, _ = w.Write(buf[:n])
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (w *countingWriter) stats() (n int64, first, last time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n, w.first, w.last
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return percentile(s, 0.5)
}

// parseSize parses a byte count with an optional binary suffix, as head -c
// does: 1G is 1<<30, 512K is 512<<10.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	if s != "" {
		switch strings.ToUpper(s[len(s)-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		}
		if mult != 1 {
			s = s[:len(s)-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v * mult, nil
}
