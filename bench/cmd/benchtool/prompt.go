package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// runPrompt measures time to a prompt: it starts the command on a PTY,
// types a probe command line at once (the terminal buffers it as it would a
// fast typist's), and stops the clock when the probe's output appears, i.e.
// when a shell is there and runs what it is given. Then it types exit and
// waits for the command to end before the next run.
func runPrompt(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("prompt", stderr)
	var c common
	c.register(fs, 30*time.Second)
	n := fs.Int("n", 20, "measured runs")
	warmup := fs.Int("warmup", 1, "runs before the measured ones, not recorded")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	res := c.result(kindPrompt)
	err := sample(ctx, &res, *warmup, *n, func(int) (time.Duration, error) {
		return promptOnce(ctx, c.argv, c.timeout)
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stderr, summaryLine(res))
	return writeResult(c.out, stdout, res)
}

func promptOnce(ctx context.Context, argv []string, timeout time.Duration) (time.Duration, error) {
	p, err := startPTY(ctx, argv)
	if err != nil {
		return 0, err
	}
	line, want := probe()
	if err := p.send(line); err != nil {
		p.close(timeout)
		return 0, fmt.Errorf("type probe: %w", err)
	}
	at, err := p.waitFor(want, timeout)
	if cerr := p.close(timeout); err == nil && cerr != nil {
		err = fmt.Errorf("after the prompt: %w", cerr)
	}
	if err != nil {
		return 0, err
	}
	return at.Sub(p.start), nil
}
