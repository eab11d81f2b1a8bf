package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// runKeystroke measures the keystroke echo round trip through a shell: it
// starts the command on a PTY, waits until the shell runs a probe, then
// types one character at a time and times how long each takes to come back
// as the remote terminal's (or line editor's) echo.
func runKeystroke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keystroke", stderr)
	var c common
	c.register(fs, 30*time.Second)
	n := fs.Int("n", 200, "measured keystrokes")
	warmup := fs.Int("warmup", 20, "keystrokes before the measured ones, not recorded")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	res := c.result(kindKeystroke)
	samples, err := keystrokes(ctx, c.argv, c.timeout, *warmup, *n)
	if err != nil {
		res.Failures++
		res.LastError = err.Error()
	}
	res.N = len(samples)
	res.setSamples(samples)
	fmt.Fprintln(stderr, summaryLine(res))
	return writeResult(c.out, stdout, res)
}

// keystrokes types warmup+n characters into the shell and returns the round
// trips of the last n. Every 40 characters it clears the line (^U) and waits
// for the terminal to settle, untimed, so the line never wraps.
func keystrokes(ctx context.Context, argv []string, timeout time.Duration, warmup, n int) (samples []time.Duration, err error) {
	p, err := startPTY(ctx, argv)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := p.close(timeout); err == nil && cerr != nil {
			err = fmt.Errorf("after typing: %w", cerr)
		}
	}()
	line, want := probe()
	if err := p.send(line); err != nil {
		return nil, fmt.Errorf("type probe: %w", err)
	}
	if _, err := p.waitFor(want, timeout); err != nil {
		return nil, err
	}
	p.quiet(100*time.Millisecond, 2*time.Second) // the prompt after the probe
	const key = "x"
	for i := 0; i < warmup+n; i++ {
		if ctx.Err() != nil {
			return samples, ctx.Err()
		}
		if i > 0 && i%40 == 0 {
			if err := p.send("\x15"); err != nil {
				return samples, err
			}
			p.quiet(30*time.Millisecond, time.Second)
		}
		sent := time.Now()
		if err := p.send(key); err != nil {
			return samples, fmt.Errorf("type: %w", err)
		}
		at, err := p.waitFor([]byte(key), 5*time.Second)
		if err != nil {
			return samples, fmt.Errorf("keystroke %d: %w", i, err)
		}
		if i >= warmup {
			samples = append(samples, at.Sub(sent))
		}
	}
	return samples, nil
}
