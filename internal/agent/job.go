package agent

import (
	"context"
	"errors"
	"time"
)

// A detached run's command is the session's job: the control plane starts
// it once (Control.StartJob) and collects its output (Control.JobOutput),
// which the agent holds, both streams apart and timestamped, until it is
// collected, up to a bound. Output beyond the bound drops the oldest first
// and shows as a gap in offsets. The agent does not exit for IdleExit while
// the job runs.

// JobState is what the agent knows of the session's job.
type JobState struct {
	Started   time.Time // zero: not started
	Exited    bool
	ExitedAt  time.Time
	Status    int    // the exit status as a shell reports it: 128+n when signal n killed it
	Signal    string // the signal that killed it ("KILL"), "" when it exited
	OutputEnd int64  // the offset after the last byte it printed, so far
}

// JobRecord is a piece of the job's output: Offset places Data in the
// output of both streams together, in the order the agent read them.
// Stream is "stdout" or "stderr".
type JobRecord struct {
	Offset int64
	Stream string
	At     time.Time
	Data   []byte
}

// StartJob starts command (a command line for the session's shell, run as
// an exec request's is, with no stdin) as the session's job, unless a job
// was started already, and returns the job's state. A control plane that
// restarted calls it again: the job runs once.
func (c *Control) StartJob(ctx context.Context, command string) (JobState, error) {
	return JobState{}, errors.New("agent: jobs are not implemented yet")
}

// JobOutput streams the job's output from offset from on. Records come in
// offset order; the first one starts after from when the agent no longer
// holds what lay there (a gap). It needs a started job.
func (c *Control) JobOutput(ctx context.Context, from int64) (*JobOutput, error) {
	return nil, errors.New("agent: jobs are not implemented yet")
}

// JobOutput is an open stream of the job's output.
type JobOutput struct{}

// Next returns the next record, waiting for the job to print it. After
// the job exited and its last record was returned, Next returns io.EOF
// and Exit says how it exited.
func (o *JobOutput) Next() (JobRecord, error) {
	return JobRecord{}, errors.New("agent: jobs are not implemented yet")
}

// Exit is the job's state after Next returned io.EOF.
func (o *JobOutput) Exit() JobState { return JobState{} }

// Close closes the stream (not the job).
func (o *JobOutput) Close() error { return nil }
