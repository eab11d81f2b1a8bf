package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

// logsUnreachable is how long `logs -f` keeps trying a server that does
// not answer before it gives up.
const logsUnreachable = 5 * time.Minute

func newLogsCmd() *cobra.Command {
	var (
		follow, timestamps, onlyStdout, onlyStderr bool
		since                                      string
	)
	cmd := &cobra.Command{
		Use:   "logs ID|NAME",
		Short: "Print a detached run's output (-f: follow it until the run ends)",
		Long: `Print the output a detached run (devgpu run --detach) has printed, as the
server keeps it: its standard output on stdout and its standard error on
stderr. Output the log did not keep (the run printed more than the project's
log limit) shows as one marker line on stderr.

-f follows the run until it ends, reconnecting by itself when the connection
or the server drops, with nothing printed twice or missed. A run is named by
its id or by its --name (your most recent run of that name).`,
		Example: `  devgpu logs train-1 -f
  devgpu logs 7f3c2a --since 10m --timestamps`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if onlyStdout && onlyStderr {
				return newUsageError(cmd, "--stdout and --stderr each choose one stream; give neither for both")
			}
			from, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			client, _, err := newClient()
			if err != nil {
				return err
			}
			sess, err := sessionByRef(cmd.Context(), client, args[0])
			if err != nil {
				return err
			}
			q := sdk.LogQuery{Since: from, Follow: follow}
			switch {
			case onlyStdout:
				q.Stream = sdk.StreamStdout
			case onlyStderr:
				q.Stream = sdk.StreamStderr
			}
			p := newLogPrinter(os.Stdout, os.Stderr, timestamps)
			return readLogs(cmd.Context(), client, sess.ID, q, p, logsUnreachable)
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new output until the run ends")
	fl.StringVar(&since, "since", "", "only output printed from this time on (RFC 3339, e.g. 2024-05-01T09:00:00Z) or this long ago (e.g. 10m, 2h)")
	fl.BoolVar(&onlyStdout, "stdout", false, "only the run's standard output")
	fl.BoolVar(&onlyStderr, "stderr", false, "only the run's standard error")
	fl.BoolVarP(&timestamps, "timestamps", "t", false, "begin each line with the time it was printed (RFC 3339)")
	return cmd
}

// printError is a failure to write the output itself (a closed pipe):
// asking the server again would not help.
type printError struct{ err error }

func (e printError) Error() string { return e.err.Error() }
func (e printError) Unwrap() error { return e.err }

// readLogs prints session id's log records that q selects. Following, it
// asks again from the last record printed whenever the stream breaks,
// with backoff, until the run's end record, or until the server has not
// answered for giveUp.
func readLogs(ctx context.Context, client *sdk.Client, id string, q sdk.LogQuery, p *logPrinter, giveUp time.Duration) error {
	heard := time.Now()
	backoff := reconnectMin
	away := serverAway{msg: "reconnecting to the server for the log of run " + id}
	defer away.quiet()
	for {
		err := client.Logs(ctx, id, q, func(r sdk.LogRecord) error {
			heard, backoff = time.Now(), reconnectMin
			away.answered()
			q.After = r.Next(q.After)
			if len(r.Data) > 0 {
				// What follows was printed later: asked again, the
				// server then also tells the gaps that --since hides
				// before the first record it shows.
				q.Since = time.Time{}
			}
			if err := p.print(r); err != nil {
				return printError{err}
			}
			return nil
		})
		var perr printError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &perr), !q.Follow, !sdk.Transient(err):
			return err
		case time.Since(heard) > giveUp:
			return fmt.Errorf("the server has not answered for %s (%w); run `devgpu logs %s -f` again once it is back", giveUp, err, id)
		}
		away.lost(heard, p.midLine())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, reconnectMax)
	}
}

// logPrinter writes a run's output records as the run printed them:
// stdout's to out and stderr's to errOut, and a marker line on errOut for
// output not kept.
type logPrinter struct {
	out, errOut io.Writer
	timestamps  bool
	// open tells, per stream, that its last output ended in the middle
	// of a line: the next record continues that line.
	open map[string]bool
}

func newLogPrinter(out, errOut io.Writer, timestamps bool) *logPrinter {
	return &logPrinter{out: out, errOut: errOut, timestamps: timestamps, open: map[string]bool{}}
}

func (p *logPrinter) print(r sdk.LogRecord) error {
	switch {
	case r.Dropped > 0:
		if p.open[sdk.StreamStderr] {
			p.open[sdk.StreamStderr] = false
			if _, err := io.WriteString(p.errOut, "\n"); err != nil {
				return err
			}
		}
		_, err := fmt.Fprintln(p.errOut, gapMarker(r.Dropped))
		return err
	case len(r.Data) == 0:
		return nil // a heartbeat, or the end
	}
	w := p.out
	if r.Stream == sdk.StreamStderr {
		w = p.errOut
	}
	data := r.Data
	if p.timestamps {
		data = stampLines(data, r.At.Format(time.RFC3339Nano)+" ", !p.open[r.Stream])
	}
	p.open[r.Stream] = data[len(data)-1] != '\n'
	_, err := w.Write(data)
	return err
}

// midLine reports whether the last output printed ended mid-line.
func (p *logPrinter) midLine() bool {
	return p.open[sdk.StreamStdout] || p.open[sdk.StreamStderr]
}

// gapMarker is the line that stands for n bytes of output not kept.
func gapMarker(n int64) string {
	return fmt.Sprintf("devgpu: [%s of output not kept here: the run printed more than its log keeps (the project's log limit) or faster than the server could keep it]", humanize.IBytes(uint64(n)))
}

// stampLines puts stamp at the start of each line of data: at its very
// start when lineStart (the output before it ended a line), and after
// each newline that more data follows.
func stampLines(data []byte, stamp string, lineStart bool) []byte {
	var b bytes.Buffer
	b.Grow(len(data) + len(stamp)*(bytes.Count(data, []byte{'\n'})+1))
	for len(data) > 0 {
		if lineStart {
			b.WriteString(stamp)
		}
		line, rest, found := bytes.Cut(data, []byte{'\n'})
		b.Write(line)
		if found {
			b.WriteByte('\n')
		}
		data, lineStart = rest, true
	}
	return b.Bytes()
}
