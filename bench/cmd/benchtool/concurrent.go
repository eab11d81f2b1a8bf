package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// runConcurrent runs the command -jobs times from -workers goroutines, each
// starting its next run as soon as its last one exits, and records the jobs
// per second over the wall time of the whole batch (and each job's latency).
func runConcurrent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("concurrent", stderr)
	var c common
	c.register(fs, 5*time.Minute)
	jobs := fs.Int("jobs", 200, "runs in all")
	workers := fs.Int("workers", 16, "concurrent submitters")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *jobs < 1 || *workers < 1 {
		return fmt.Errorf("concurrent: -jobs and -workers must be positive")
	}
	res := c.result(kindConcurrent)
	res.Workers = *workers

	var (
		mu      sync.Mutex
		samples []time.Duration
		next    int
		wg      sync.WaitGroup
	)
	take := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if next >= *jobs || ctx.Err() != nil {
			return false
		}
		next++
		return true
	}
	start := time.Now()
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for take() {
				d, err := runOnce(ctx, c.argv, c.timeout, nil)
				mu.Lock()
				if err != nil {
					res.Failures++
					res.LastError = err.Error()
				} else {
					samples = append(samples, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	if err := ctx.Err(); err != nil {
		return err
	}
	res.N = len(samples)
	res.WallS = wall.Seconds()
	res.JobsPerSec = float64(res.N) / wall.Seconds()
	res.setSamples(samples)
	fmt.Fprintln(stderr, summaryLine(res))
	return writeResult(c.out, stdout, res)
}
