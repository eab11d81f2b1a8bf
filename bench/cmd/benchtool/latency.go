package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// runLatency runs the command -n times, one after another, and records the
// end-to-end wall time of each run (start to exit).
func runLatency(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("latency", stderr)
	var c common
	c.register(fs, 60*time.Second)
	n := fs.Int("n", 50, "measured runs")
	warmup := fs.Int("warmup", 3, "runs before the measured ones, not recorded")
	pause := fs.Duration("pause", 0, "wait this long between runs, untimed (to let a warm pool refill)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	res := c.result(kindLatency)
	err := sample(ctx, &res, *warmup, *n, func(i int) (time.Duration, error) {
		if i > 0 && *pause > 0 {
			time.Sleep(*pause)
		}
		return runOnce(ctx, c.argv, c.timeout, nil)
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stderr, summaryLine(res))
	return writeResult(c.out, stdout, res)
}

// sample runs once warmup+n times, one after another, and records the n
// measured durations in res, counting the runs that failed.
func sample(ctx context.Context, res *Result, warmup, n int, once func(i int) (time.Duration, error)) error {
	var samples []time.Duration
	for i := 0; i < warmup+n; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, err := once(i)
		if i < warmup {
			continue
		}
		if err != nil {
			res.Failures++
			res.LastError = err.Error()
			continue
		}
		samples = append(samples, d)
	}
	res.N = len(samples)
	res.setSamples(samples)
	return nil
}
