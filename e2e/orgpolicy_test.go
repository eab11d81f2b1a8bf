package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// TestConcurrentOrgPolicyUpdates: admins change different parts of the
// organisation policy at the same moment, each with `devgpu admin org
// update`, round after round. Every change is kept: none of them
// overwrites another with the policy it read before the other wrote.
func TestConcurrentOrgPolicyUpdates(t *testing.T) {
	e := newEnv(t, "t4:1")
	const rounds = 12
	for i := 1; i <= rounds; i++ {
		updates := [][]string{
			{"admin", "org", "update", "--max-gpus-per-user", strconv.Itoa(i)},
			{"admin", "org", "update", "--quota", fmt.Sprintf("t4=%d", i)},
			{"admin", "org", "update", "--registries", fmt.Sprintf("reg%d.example.com", i)},
			{"admin", "org", "update", "--idle-timeout", fmt.Sprintf("%dm", i)},
		}
		var wg sync.WaitGroup
		errs := make([]string, len(updates))
		start := make(chan struct{})
		for j, args := range updates {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[j] = e.run(args...)
			}()
		}
		close(start)
		wg.Wait()
		for j, err := range errs {
			if err != "" {
				t.Fatalf("round %d: devgpu %s: %s", i, strings.Join(updates[j], " "), err)
			}
		}
		r := e.cli("admin", "org", "show", "--json")
		if r.code != 0 {
			t.Fatalf("org show: %d %s", r.code, r.stderr)
		}
		var p sdk.OrgPolicy
		if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
			t.Fatalf("org show --json: %v\n%s", err, r.stdout)
		}
		var lost []string
		if p.Defaults.MaxGPUsPerUser == nil || *p.Defaults.MaxGPUsPerUser != i {
			lost = append(lost, "max_gpus_per_user")
		}
		if !slices.Contains(p.Quotas, sdk.Quota{GPUType: "t4", Max: i}) {
			lost = append(lost, "the t4 quota")
		}
		if !slices.Equal(p.Registries, []string{fmt.Sprintf("reg%d.example.com", i)}) {
			lost = append(lost, "registries")
		}
		if p.Defaults.IdleTimeout == nil || time.Duration(*p.Defaults.IdleTimeout) != time.Duration(i)*time.Minute {
			lost = append(lost, "idle_timeout")
		}
		if len(lost) > 0 {
			t.Fatalf("round %d: four concurrent updates, but the policy lost %s:\n%s", i, strings.Join(lost, ", "), r.stdout)
		}
	}
}

// run runs the CLI to completion from any goroutine and returns "" when
// it succeeded, else what went wrong.
func (e *env) run(args ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = e.environ()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Sprintf("%v: %s", err, stderr.String())
	}
	return ""
}
