// Command benchtool is the measuring half of bench/compare.sh: it runs a
// command many times (or many at once, or under a PTY) and records how long it
// took, so that devgpu and its peers (OpenSSH, Slurm) are timed by the same
// clock in the same run.
//
// Each measuring subcommand appends one JSON object per measurement to the
// file named by -out (and prints a one-line summary on stderr); `report` turns
// that file into the markdown comparison, with the ratios the DESIGN.md
// performance targets ask for.
//
//	benchtool latency    -name N -out F [-n 50] [-warmup 3] -- CMD [ARG...]
//	benchtool prompt     -name N -out F [-n 20] [-warmup 1] -- CMD [ARG...]
//	benchtool keystroke  -name N -out F [-n 200] -- CMD [ARG...]
//	benchtool throughput -name N -out F [-n 3] [-expect-bytes SIZE] -- CMD [ARG...]
//	benchtool concurrent -name N -out F [-jobs 200] [-workers 16] -- CMD [ARG...]
//	benchtool admissions -name N -out F [-url U -token T | -config F] [-clients 64] [-duration 10s] ...
//	benchtool report     [-in F]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "benchtool:", err)
		}
		os.Exit(2)
	}
}

// subcommands maps each subcommand to its entry point.
var subcommands = map[string]func(ctx context.Context, args []string, stdout, stderr io.Writer) error{
	"latency":    runLatency,
	"prompt":     runPrompt,
	"keystroke":  runKeystroke,
	"throughput": runThroughput,
	"concurrent": runConcurrent,
	"admissions": runAdmissions,
	"report":     runReport,
	"registry":   runRegistry,
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return flag.ErrHelp
	}
	f, ok := subcommands[args[0]]
	if !ok {
		usage(stderr)
		return fmt.Errorf("unknown subcommand %q", args[0])
	}
	return f(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: benchtool SUBCOMMAND [FLAGS] [-- CMD [ARG...]]

  latency     run CMD -n times one after another; end-to-end wall time
  prompt      start CMD on a PTY -n times; time until it runs a typed command
  keystroke   start CMD on a PTY once; time from each keystroke to its echo
  throughput  run CMD -n times; bytes/s of its stdout
  concurrent  run CMD -jobs times from -workers goroutines; jobs/s
  admissions  create+end sessions through the API from -clients goroutines
              against small caps; admissions/s, then replay the audit log
              and count cap violations
  report      read the results file and print the markdown comparison
  registry    serve an in-memory OCI registry holding a busybox image on
              127.0.0.1; print the image's pinned reference, serve until killed
`)
}

// common holds the flags every measuring subcommand shares.
type common struct {
	name    string
	label   string
	out     string
	timeout time.Duration
	argv    []string
}

func (c *common) register(fs *flag.FlagSet, timeout time.Duration) {
	fs.StringVar(&c.name, "name", "", "label of this measurement in the results `file` (required)")
	fs.StringVar(&c.label, "label", "", "the command as the report shows it (default: the command itself)")
	fs.StringVar(&c.out, "out", "", "append the result as a JSON line to this `file` (default: stdout)")
	fs.DurationVar(&c.timeout, "timeout", timeout, "kill one run of CMD after this long")
}

// parse parses the flags and takes the command after them (after "--").
func (c *common) parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	c.argv = fs.Args()
	if len(c.argv) == 0 {
		return fmt.Errorf("%s: no command given (put it after --)", fs.Name())
	}
	if c.name == "" {
		return fmt.Errorf("%s: -name is required", fs.Name())
	}
	if c.label == "" {
		c.label = strings.Join(c.argv, " ")
	}
	return nil
}

// result starts the Result of this measurement.
func (c *common) result(kind string) Result {
	return Result{Name: c.name, Kind: kind, Cmd: c.argv, Label: c.label, Time: time.Now().UTC()}
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}
