//go:build linux && !agentonly

package acafake_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	armappcontainers "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/appcontainers/armappcontainers/v3"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/acafake"
)

const (
	sub = "00000000-0000-0000-0000-000000000001"
	rg  = "rg-devgpu"
	env = "env-gpu"
	t4  = "Consumption-GPU-NC8as-T4"
)

// poll is how often the tests poll long-running operations (azcore allows
// less than a second under go test: runtime/poller.go).
var poll = &runtime.PollUntilDoneOptions{Frequency: 10 * time.Millisecond}

type rig struct {
	f       *acafake.Fake
	dir     string
	cred    azcore.TokenCredential
	clients *armappcontainers.ClientFactory
	ctx     context.Context
}

// pullIdentity is the user-assigned identity the tests' jobs pull with.
const pullIdentity = "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull"

func newRig(t *testing.T) *rig { return newRigWith(t, nil) }

// newRigWith is newRig with options that change sets.
func newRigWith(t *testing.T, change func(*acafake.Options)) *rig {
	t.Helper()
	dir := t.TempDir()
	opts := acafake.Options{
		SubscriptionID: sub,
		ResourceGroup:  rg,
		Environment:    env,
		Profiles:       map[string]string{"gpu-t4": t4},
		GPUQuota:       map[string]int{t4: 1},
		Dir:            dir,
		Logger:         testLogger(t),
	}
	if change != nil {
		change(&opts)
	}
	f, err := acafake.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	endpoint, header := f.IdentityEndpoint()
	t.Setenv("IDENTITY_ENDPOINT", endpoint)
	t.Setenv("IDENTITY_HEADER", header)
	cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: f.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	clients, err := armappcontainers.NewClientFactory(sub, cred, &arm.ClientOptions{ClientOptions: f.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{f: f, dir: dir, cred: cred, clients: clients, ctx: testutil.Context(t, testutil.WaitLong)}
}

var (
	probeOnce sync.Once
	probeBin  []byte
	probeErr  error
)

// probeSource is the program the executions run: it prints the secret
// file it is given and its env, then exits with the status it is told, or
// waits for SIGTERM.
const probeSource = `package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if os.Args[1] == "child" {
		time.Sleep(time.Hour)
		return
	}
	b, err := os.ReadFile(os.Args[2])
	fmt.Printf("secret=%s err=%v\n", b, err)
	fmt.Printf("FOO=%s TOKEN=%s GPU=%s\n", os.Getenv("FOO"), os.Getenv("TOKEN"), os.Getenv("NVIDIA_VISIBLE_DEVICES"))
	if os.Args[1] == "spawn" || os.Args[1] == "spawn-exit" {
		// A child in a session of its own, as the agent starts shells.
		c := exec.Command(os.Args[0], "child")
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := c.Start(); err != nil {
			fmt.Println("spawn:", err)
			os.Exit(2)
		}
		fmt.Printf("child=%d\n", c.Process.Pid)
		if os.Args[1] == "spawn-exit" {
			// Exit once the test has made $HOME/go.
			for {
				if _, err := os.Stat(filepath.Join(os.Getenv("HOME"), "go")); err == nil {
					os.Exit(0)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	if os.Args[1] == "wait" || os.Args[1] == "spawn" {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		<-c
		fmt.Println("terminated")
		return
	}
	n, _ := strconv.Atoi(os.Args[1])
	os.Exit(n)
}
`

// probe builds probeSource once, statically (CGO_ENABLED=0), as a
// session image's agent is.
func probe(t *testing.T) []byte {
	t.Helper()
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "acafake-probe-")
		if err != nil {
			probeErr = err
			return
		}
		defer os.RemoveAll(dir)
		if probeErr = os.WriteFile(filepath.Join(dir, "main.go"), []byte(probeSource), 0o644); probeErr != nil {
			return
		}
		if probeErr = os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module probe\n\ngo 1.22\n"), 0o644); probeErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", "probe", ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			probeErr = errors.New(err.Error() + ": " + string(out))
			return
		}
		probeBin, probeErr = os.ReadFile(filepath.Join(dir, "probe"))
	})
	if probeErr != nil {
		t.Fatalf("build probe: %v", probeErr)
	}
	return probeBin
}

// layer is a layer holding files (path -> content).
func layer(t *testing.T, files map[string][]byte) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for p, b := range files {
		if err := tw.WriteHeader(&tar.Header{Name: p, Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testLogger sends the fake's log to the test's log, so a failure shows
// what the executions printed.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// pushProbe pushes an image whose second layer holds the probe at
// /devgpu-agent (its first has another file there, which the second
// must override) and returns its reference.
func (r *rig) pushProbe(t *testing.T) string {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image,
		layer(t, map[string][]byte{"devgpu-agent": []byte("#!/bin/false\n"), "etc/os-release": []byte("ID=fake\n")}),
		layer(t, map[string][]byte{"devgpu-agent": probe(t)}))
	if err != nil {
		t.Fatal(err)
	}
	ref := r.f.Registry() + "/base:1"
	if err := r.f.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

// jobSpec is a job as the aca runtime creates one: Manual trigger, a
// Secret volume at /var/run/devgpu, env from a value and a secret, the
// registry pulled with a user-assigned identity.
func (r *rig) jobSpec(image, profile string, args ...string) armappcontainers.Job {
	envID := "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.App/managedEnvironments/" + env
	command := []*string{to.Ptr("/devgpu-agent")}
	for _, a := range args {
		command = append(command, to.Ptr(a))
	}
	return armappcontainers.Job{
		Location: to.Ptr("swedencentral"),
		Tags:     map[string]*string{"devgpu-installation": to.Ptr("i1")},
		Identity: &armappcontainers.ManagedServiceIdentity{
			Type:                   to.Ptr(armappcontainers.ManagedServiceIdentityTypeUserAssigned),
			UserAssignedIdentities: map[string]*armappcontainers.UserAssignedIdentity{pullIdentity: {}},
		},
		Properties: &armappcontainers.JobProperties{
			EnvironmentID:       to.Ptr(envID),
			WorkloadProfileName: to.Ptr(profile),
			Configuration: &armappcontainers.JobConfiguration{
				TriggerType:         to.Ptr(armappcontainers.TriggerTypeManual),
				ReplicaTimeout:      to.Ptr[int32](3600),
				ReplicaRetryLimit:   to.Ptr[int32](0),
				ManualTriggerConfig: &armappcontainers.JobConfigurationManualTriggerConfig{Parallelism: to.Ptr[int32](1), ReplicaCompletionCount: to.Ptr[int32](1)},
				Secrets: []*armappcontainers.Secret{
					{Name: to.Ptr("agent-secret"), Value: to.Ptr("s3cret")},
					{Name: to.Ptr("token"), Value: to.Ptr("tok")},
				},
				Registries: []*armappcontainers.RegistryCredentials{{Server: to.Ptr(r.f.Registry()), Identity: to.Ptr(pullIdentity)}},
			},
			Template: &armappcontainers.JobTemplate{
				Containers: []*armappcontainers.Container{{
					Name:         to.Ptr("session"),
					Image:        to.Ptr(image),
					Command:      command,
					Env:          []*armappcontainers.EnvironmentVar{{Name: to.Ptr("FOO"), Value: to.Ptr("bar")}, {Name: to.Ptr("TOKEN"), SecretRef: to.Ptr("token")}},
					VolumeMounts: []*armappcontainers.VolumeMount{{VolumeName: to.Ptr("devgpu"), MountPath: to.Ptr("/var/run/devgpu")}},
				}},
				Volumes: []*armappcontainers.Volume{{
					Name:        to.Ptr("devgpu"),
					StorageType: to.Ptr(armappcontainers.StorageTypeSecret),
					Secrets:     []*armappcontainers.SecretVolumeItem{{SecretRef: to.Ptr("agent-secret"), Path: to.Ptr("agent-secret")}},
				}},
			},
		},
	}
}

func (r *rig) create(t *testing.T, name string, spec armappcontainers.Job) armappcontainers.Job {
	t.Helper()
	p, err := r.clients.NewJobsClient().BeginCreateOrUpdate(r.ctx, rg, name, spec, nil)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	res, err := p.PollUntilDone(r.ctx, poll)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return res.Job
}

func (r *rig) start(t *testing.T, name string) string {
	t.Helper()
	p, err := r.clients.NewJobsClient().BeginStart(r.ctx, rg, name, nil)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	res, err := p.PollUntilDone(r.ctx, poll)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return *res.Name
}

func (r *rig) execution(t *testing.T, job, execName string) armappcontainers.JobExecution {
	t.Helper()
	res, err := r.clients.NewContainerAppsAPIClient().JobExecution(r.ctx, rg, job, execName, nil)
	if err != nil {
		t.Fatalf("get execution %s: %v", execName, err)
	}
	return res.JobExecution
}

func (r *rig) waitStatus(t *testing.T, job, execName string, want armappcontainers.JobExecutionRunningState) armappcontainers.JobExecution {
	t.Helper()
	var x armappcontainers.JobExecution
	testutil.Eventually(t, testutil.WaitMedium, "execution "+execName+" "+string(want), func() bool {
		x = r.execution(t, job, execName)
		return *x.Properties.Status == want
	})
	return x
}

func responseError(t *testing.T, err error) *azcore.ResponseError {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("want an azcore.ResponseError, got %v", err)
	}
	return re
}

// The environment's GET shows its location and workload profiles; its
// usages show the GPU quota (ManagedEnvironmentsClient.Get,
// ManagedEnvironmentUsagesClient.NewListPager).
func TestEnvironmentAndUsages(t *testing.T) {
	r := newRig(t)
	e, err := r.clients.NewManagedEnvironmentsClient().Get(r.ctx, rg, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if *e.Location != "swedencentral" || *e.Properties.ProvisioningState != armappcontainers.EnvironmentProvisioningStateSucceeded {
		t.Fatalf("environment: location %s state %s", *e.Location, *e.Properties.ProvisioningState)
	}
	types := map[string]string{}
	for _, p := range e.Properties.WorkloadProfiles {
		types[*p.Name] = *p.WorkloadProfileType
	}
	if types["gpu-t4"] != t4 || types["Consumption"] != "Consumption" {
		t.Fatalf("workload profiles %v", types)
	}
	var found *armappcontainers.Usage
	pager := r.clients.NewManagedEnvironmentUsagesClient().NewListPager(rg, env, nil)
	for pager.More() {
		page, err := pager.NextPage(r.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range page.Value {
			if *u.Name.LocalizedValue == "Managed Environment Consumption T4 Gpus" {
				found = u
			}
		}
	}
	if found == nil || *found.Limit != 1 || *found.CurrentValue != 0 || *found.Name.Value != "ManagedEnvironmentConsumptionT4Gpus" {
		t.Fatalf("T4 usage %+v", found)
	}
	if _, err := r.clients.NewManagedEnvironmentsClient().Get(r.ctx, rg, "other", nil); responseError(t, err).ErrorCode != "ResourceNotFound" {
		t.Fatalf("get other environment: %v", err)
	}
}

// A job goes through create (Azure-AsyncOperation), get (no secret
// values), start (Location, JobExecutionBase), an execution that runs the
// image's command with its secret file and env and succeeds, and delete
// (Location, then 404 ResourceNotFound).
func TestJobLifecycle(t *testing.T) {
	r := newRig(t)
	image := r.pushProbe(t)
	created := r.create(t, "job-ok", r.jobSpec(image, "gpu-t4", "0", "/var/run/devgpu/agent-secret"))
	if *created.Properties.ProvisioningState != armappcontainers.JobProvisioningStateSucceeded {
		t.Fatalf("after create: %s", *created.Properties.ProvisioningState)
	}
	polls := 0
	for k, n := range r.f.Requests() {
		if strings.HasPrefix(k, "GET /providers/Microsoft.App/locations/swedencentral/containerappsjobOperationStatuses/") {
			polls += n
		}
	}
	if polls < 2 {
		t.Fatalf("create succeeded after %d polls; the fake ends an operation at its second: %v", polls, r.f.Requests())
	}
	got, err := r.clients.NewJobsClient().Get(r.ctx, rg, "job-ok", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got.Properties.Configuration.Secrets {
		if s.Value != nil {
			t.Fatalf("GET returned secret %s's value", *s.Name)
		}
	}
	if *got.ID != "/subscriptions/"+sub+"/resourceGroups/"+rg+"/providers/Microsoft.App/jobs/job-ok" || *got.Tags["devgpu-installation"] != "i1" {
		t.Fatalf("job %s tags %v", *got.ID, got.Tags)
	}

	execName := r.start(t, "job-ok")
	if !strings.HasPrefix(execName, "job-ok-") {
		t.Fatalf("execution name %s", execName)
	}
	x := r.waitStatus(t, "job-ok", execName, armappcontainers.JobExecutionRunningStateSucceeded)
	if x.Properties.StartTime == nil || x.Properties.EndTime == nil {
		t.Fatalf("times %+v", x.Properties)
	}
	out := r.f.Output("job-ok")
	if !strings.Contains(out, "secret=s3cret err=<nil>") || !strings.Contains(out, "FOO=bar TOKEN=tok GPU=GPU-sim-t4-0") {
		t.Fatalf("the probe printed %q", out)
	}
	if e := r.f.Env("job-ok"); e["TOKEN"] != "tok" || e["NVIDIA_VISIBLE_DEVICES"] != "GPU-sim-t4-0" {
		t.Fatalf("env %v", e)
	}
	// The secret volume's file is the secret's value, mode 0400, under Dir.
	var secretFiles []string
	_ = filepath.WalkDir(r.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "agent-secret" {
			if fi, err := d.Info(); err == nil && fi.Mode().Perm() == 0o400 {
				secretFiles = append(secretFiles, p)
			}
		}
		return nil
	})
	if len(secretFiles) != 1 {
		t.Fatalf("secret files with mode 0400 under Dir: %v", secretFiles)
	}
	list := r.clients.NewJobsExecutionsClient().NewListPager(rg, "job-ok", nil)
	page, err := list.NextPage(r.ctx)
	if err != nil || len(page.Value) != 1 || *page.Value[0].Name != execName {
		t.Fatalf("executions %v %v", page.Value, err)
	}

	dp, err := r.clients.NewJobsClient().BeginDelete(r.ctx, rg, "job-ok", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dp.PollUntilDone(r.ctx, poll); err != nil {
		t.Fatal(err)
	}
	_, err = r.clients.NewJobsClient().Get(r.ctx, rg, "job-ok", nil)
	if re := responseError(t, err); re.StatusCode != http.StatusNotFound || re.ErrorCode != "ResourceNotFound" {
		t.Fatalf("get after delete: %v", err)
	}
	// Deleting a job that is not there is 204 at once, with nothing to
	// poll (Jobs.json, Jobs_Delete: "Container Apps Job does not exist.").
	var resp *http.Response
	pollsBefore := locationPolls(r.f)
	dp, err = r.clients.NewJobsClient().BeginDelete(runtime.WithCaptureResponse(r.ctx, &resp), rg, "job-ok", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp == nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete of a missing job answered %v, want 204", resp)
	}
	if _, err := dp.PollUntilDone(r.ctx, poll); err != nil {
		t.Fatal(err)
	}
	if n := locationPolls(r.f) - pollsBefore; n != 0 {
		t.Fatalf("delete of a missing job made %d polls", n)
	}
}

// locationPolls counts the polls of Location URLs the fake answered.
func locationPolls(f *acafake.Fake) int {
	n := 0
	for k, v := range f.Requests() {
		if strings.Contains(k, "/containerappsjobOperationResults/") {
			n += v
		}
	}
	return n
}

// A non-zero exit fails the execution; a command the image lacks fails it
// with a reason; neither is restarted.
func TestExecutionFails(t *testing.T) {
	r := newRig(t)
	image := r.pushProbe(t)
	r.create(t, "job-bad", r.jobSpec(image, "Consumption", "3", "/var/run/devgpu/agent-secret"))
	badExec := r.start(t, "job-bad")
	x := r.waitStatus(t, "job-bad", badExec, armappcontainers.JobExecutionRunningStateFailed)
	if x.Properties.EndTime == nil {
		t.Fatal("a failed execution has no end time")
	}
	// A stop after the process ended records nothing.
	sp, err := r.clients.NewJobsClient().BeginStopExecution(r.ctx, rg, "job-bad", badExec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.PollUntilDone(r.ctx, poll); err != nil {
		t.Fatal(err)
	}
	if st := *r.execution(t, "job-bad", badExec).Properties.Status; st != armappcontainers.JobExecutionRunningStateFailed {
		t.Fatalf("a stop after the exit made the execution %s", st)
	}
	if e := r.f.Env("job-bad"); e["NVIDIA_VISIBLE_DEVICES"] != "" {
		t.Fatalf("a Consumption replica got a GPU: %v", e)
	}

	spec := r.jobSpec(image, "Consumption", "0", "/var/run/devgpu/agent-secret")
	spec.Properties.Template.Containers[0].Command[0] = to.Ptr("/missing")
	r.create(t, "job-missing", spec)
	r.waitStatus(t, "job-missing", r.start(t, "job-missing"), armappcontainers.JobExecutionRunningStateFailed)
	if st, _ := r.f.Execution("job-missing"); !strings.Contains(st.Reason, "/missing is not a file in image") {
		t.Fatalf("reason %q", st.Reason)
	}

	// Without a registries entry the pull is refused, as Container Apps
	// refuses a private registry it has no credentials for.
	spec = r.jobSpec(image, "Consumption", "0", "/var/run/devgpu/agent-secret")
	spec.Properties.Configuration.Registries = nil
	r.create(t, "job-noauth", spec)
	r.waitStatus(t, "job-noauth", r.start(t, "job-noauth"), armappcontainers.JobExecutionRunningStateFailed)
	if st, _ := r.f.Execution("job-noauth"); !strings.Contains(st.Reason, "unauthorized") {
		t.Fatalf("reason %q", st.Reason)
	}

	// A job's new system-assigned identity has no AcrPull at its first
	// pull.
	r.create(t, "job-system", systemSpec(r.jobSpec(image, "Consumption", "0", "/var/run/devgpu/agent-secret")))
	r.waitStatus(t, "job-system", r.start(t, "job-system"), armappcontainers.JobExecutionRunningStateFailed)
	if st, _ := r.f.Execution("job-system"); !strings.Contains(st.Reason, "system-assigned identity") || !strings.Contains(st.Reason, "AcrPull") || st.PID != 0 {
		t.Fatalf("a pull with the system identity: %+v", st)
	}
}

// systemSpec makes spec pull with the job's system-assigned identity.
func systemSpec(spec armappcontainers.Job) armappcontainers.Job {
	spec.Identity = &armappcontainers.ManagedServiceIdentity{Type: to.Ptr(armappcontainers.ManagedServiceIdentityTypeSystemAssigned)}
	spec.Properties.Configuration.Registries[0].Identity = to.Ptr("system")
	return spec
}

// With Options.SystemIdentityHasAcrPull, the system identity pulls.
func TestSystemIdentityHasAcrPull(t *testing.T) {
	r := newRigWith(t, func(o *acafake.Options) { o.SystemIdentityHasAcrPull = true })
	image := r.pushProbe(t)
	r.create(t, "job-system", systemSpec(r.jobSpec(image, "Consumption", "0", "/var/run/devgpu/agent-secret")))
	r.waitStatus(t, "job-system", r.start(t, "job-system"), armappcontainers.JobExecutionRunningStateSucceeded)
}

// Stopping an execution SIGTERMs its process; the execution is Stopped
// and the process gone. A crash fails it. Deleting a job stops its
// execution.
func TestStopCrashDelete(t *testing.T) {
	r := newRig(t)
	image := r.pushProbe(t)
	r.create(t, "job-wait", r.jobSpec(image, "gpu-t4", "wait", "/var/run/devgpu/agent-secret"))
	execName := r.start(t, "job-wait")
	var pid int
	testutil.Eventually(t, testutil.WaitMedium, "the process", func() bool {
		st, _ := r.f.Execution("job-wait")
		pid = st.PID
		return pid != 0 && strings.Contains(r.f.Output("job-wait"), "GPU=")
	})
	if got := r.f.Running(); len(got) != 1 || got[0] != "job-wait" {
		t.Fatalf("running %v", got)
	}
	if *r.execution(t, "job-wait", execName).Properties.Status != armappcontainers.JobExecutionRunningStateRunning {
		t.Fatal("not running")
	}
	sp, err := r.clients.NewJobsClient().BeginStopExecution(r.ctx, rg, "job-wait", execName, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.PollUntilDone(r.ctx, poll); err != nil {
		t.Fatal(err)
	}
	if st := *r.execution(t, "job-wait", execName).Properties.Status; st != armappcontainers.JobExecutionRunningStateStopped {
		t.Fatalf("after stop: %s", st)
	}
	if testutil.ProcessAlive(pid) {
		t.Fatalf("process %d outlived the stop", pid)
	}
	if !strings.Contains(r.f.Output("job-wait"), "terminated") {
		t.Fatalf("the process did not see SIGTERM: %q", r.f.Output("job-wait"))
	}

	execName = r.start(t, "job-wait")
	testutil.Eventually(t, testutil.WaitMedium, "the process", func() bool {
		st, _ := r.f.Execution("job-wait")
		pid = st.PID
		return pid != 0
	})
	if err := r.f.Crash("job-wait"); err != nil {
		t.Fatal(err)
	}
	r.waitStatus(t, "job-wait", execName, armappcontainers.JobExecutionRunningStateFailed)
	if testutil.ProcessAlive(pid) {
		t.Fatalf("process %d outlived the crash", pid)
	}

	r.start(t, "job-wait")
	testutil.Eventually(t, testutil.WaitMedium, "the process", func() bool {
		st, _ := r.f.Execution("job-wait")
		pid = st.PID
		return pid != 0
	})
	dp, err := r.clients.NewJobsClient().BeginDelete(r.ctx, rg, "job-wait", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dp.PollUntilDone(r.ctx, poll); err != nil {
		t.Fatal(err)
	}
	if testutil.ProcessAlive(pid) || len(r.f.Running()) != 0 {
		t.Fatalf("process %d outlived its job's delete (running %v)", pid, r.f.Running())
	}
}

// An execution that runs past the job's replicaTimeout is killed and
// fails (JobConfiguration.ReplicaTimeout: "Maximum number of seconds a
// replica is allowed to run").
func TestReplicaTimeout(t *testing.T) {
	r := newRig(t)
	image := r.pushProbe(t)
	spec := r.jobSpec(image, "Consumption", "wait", "/var/run/devgpu/agent-secret")
	spec.Properties.Configuration.ReplicaTimeout = to.Ptr[int32](1)
	r.create(t, "job-slow", spec)
	r.waitStatus(t, "job-slow", r.start(t, "job-slow"), armappcontainers.JobExecutionRunningStateFailed)
	if st, _ := r.f.Execution("job-slow"); !strings.Contains(st.Reason, "replicaTimeout") || testutil.ProcessAlive(st.PID) {
		t.Fatalf("after the timeout: %+v", st)
	}
}

// Lists page with nextLink (JobsClient.NewListByResourceGroupPager).
func TestListPaging(t *testing.T) {
	r := newRig(t)
	names := []string{"job-a", "job-b", "job-c", "job-d", "job-e"}
	for _, n := range names {
		r.create(t, n, r.jobSpec(r.f.Registry()+"/x:1", "Consumption", "0", "/var/run/devgpu/agent-secret"))
	}
	var got []string
	pages := 0
	pager := r.clients.NewJobsClient().NewListByResourceGroupPager(rg, nil)
	for pager.More() {
		page, err := pager.NextPage(r.ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, j := range page.Value {
			got = append(got, *j.Name)
		}
	}
	if strings.Join(got, ",") != strings.Join(names, ",") || pages != 3 {
		t.Fatalf("%d pages: %v", pages, got)
	}
}

// A PUT while the job's create runs, and a start while its delete runs,
// are 409 Conflict; a bad PUT is 400 with a sentence.
func TestConflictsAndValidation(t *testing.T) {
	r := newRig(t)
	image := r.pushProbe(t)
	spec := r.jobSpec(image, "Consumption", "wait", "/var/run/devgpu/agent-secret")
	jobs := r.clients.NewJobsClient()
	if _, err := jobs.BeginCreateOrUpdate(r.ctx, rg, "job-c", spec, nil); err != nil {
		t.Fatal(err)
	}
	_, err := jobs.BeginCreateOrUpdate(r.ctx, rg, "job-c", spec, nil)
	if re := responseError(t, err); re.StatusCode != http.StatusConflict || re.ErrorCode != "ContainerAppsJobOperationInProgress" ||
		!strings.Contains(err.Error(), "Cannot modify a container apps job 'job-c' because there is an active provisioning operation in progress. OperationId: '") {
		t.Fatalf("second PUT: %v", err)
	}
	if _, err := jobs.BeginStart(r.ctx, rg, "job-c", nil); responseError(t, err).ErrorCode != "ContainerAppsJobOperationInProgress" {
		t.Fatalf("start while creating: %v", err)
	}

	r.create(t, "job-d", spec)
	r.start(t, "job-d")
	if _, err := jobs.BeginDelete(r.ctx, rg, "job-d", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := jobs.BeginStart(r.ctx, rg, "job-d", nil); responseError(t, err).ErrorCode != "ContainerAppsJobOperationInProgress" {
		t.Fatalf("start while deleting: %v", err)
	}

	bad := r.jobSpec(image, "gpu-a100", "0")
	_, err = jobs.BeginCreateOrUpdate(r.ctx, rg, "job-e", bad, nil)
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(err.Error(), "workload profile 'gpu-a100' does not exist") {
		t.Fatalf("PUT with a missing profile: %v", err)
	}
	bad = r.jobSpec(image, "Consumption", "0")
	bad.Properties.Template.Volumes[0].Secrets[0].SecretRef = to.Ptr("nope")
	if _, err = jobs.BeginCreateOrUpdate(r.ctx, rg, "job-e", bad, nil); err == nil || !strings.Contains(err.Error(), "secret 'nope'") {
		t.Fatalf("PUT with a missing secret: %v", err)
	}
	bad = systemSpec(r.jobSpec(image, "Consumption", "0"))
	bad.Identity = nil
	if _, err = jobs.BeginCreateOrUpdate(r.ctx, rg, "job-e", bad, nil); err == nil || !strings.Contains(err.Error(), "system-assigned identity") {
		t.Fatalf("PUT pulling with an identity the job lacks: %v", err)
	}
	bad = r.jobSpec(image, "Consumption", "0")
	bad.Identity = nil
	if _, err = jobs.BeginCreateOrUpdate(r.ctx, rg, "job-e", bad, nil); err == nil || !strings.Contains(err.Error(), "user-assigned identity") {
		t.Fatalf("PUT pulling with a user-assigned identity the job lacks: %v", err)
	}
	for _, name := range []string{"Job_E", "job--e", "e", "job-", "1job", "a23456789012345678901234567890123"} {
		_, err = jobs.BeginCreateOrUpdate(r.ctx, rg, name, spec, nil)
		if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || re.ErrorCode != "ContainerAppInvalidName" ||
			!strings.Contains(err.Error(), "Invalid ContainerAppsJob name '"+name+"'. A name must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character and cannot have '--'. The length must be between 2 and 32 characters inclusive.") {
			t.Fatalf("PUT with the bad name %q: %v", name, err)
		}
	}
	r.create(t, "a2345678901234567890123456789012", spec)

	// A start with a template is refused: the fake does not apply one.
	tmpl := &armappcontainers.JobExecutionTemplate{Containers: []*armappcontainers.JobExecutionContainer{{Name: to.Ptr("x"), Image: to.Ptr(image)}}}
	_, err = jobs.BeginStart(r.ctx, rg, "a2345678901234567890123456789012", &armappcontainers.JobsClientBeginStartOptions{Template: tmpl})
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || re.ErrorCode != "InvalidParameter" || !strings.Contains(err.Error(), "template") {
		t.Fatalf("start with a template: %v", err)
	}
}

// A 429 with Retry-After is retried by azcore's retry policy after the
// time it says (runtime/policy_retry.go honours Retry-After).
func TestThrottleRetryAfter(t *testing.T) {
	r := newRig(t)
	r.create(t, "job-t", r.jobSpec(r.f.Registry()+"/x:1", "Consumption", "0"))
	r.f.Inject(acafake.Fault{Method: "GET", PathSuffix: "/jobs/job-t", Status: http.StatusTooManyRequests, Code: "TooManyRequests", RetryAfter: 1})
	before := r.f.Requests()["GET /providers/Microsoft.App/jobs/job-t"]
	began := time.Now()
	if _, err := r.clients.NewJobsClient().Get(r.ctx, rg, "job-t", nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d < time.Second {
		t.Fatalf("the retry came after %s, before Retry-After's 1s", d)
	}
	if n := r.f.Requests()["GET /providers/Microsoft.App/jobs/job-t"] - before; n != 2 {
		t.Fatalf("%d GETs, want the throttled one and its retry", n)
	}
	// An api-version the fake does not serve is refused.
	tok, err := r.cred.GetToken(r.ctx, policy.TokenRequestOptions{Scopes: []string{"https://management.core.windows.net//.default"}})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, r.f.ARMEndpoint()+"/subscriptions/"+sub+"/resourceGroups/"+rg+"/providers/Microsoft.App/jobs?api-version=2023-05-01", nil)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err := r.f.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var body struct {
		Error struct{ Code, Message string }
	}
	_ = json.Unmarshal(b, &body)
	if resp.StatusCode != http.StatusBadRequest || body.Error.Code != "NoRegisteredProviderFound" ||
		body.Error.Message != "No registered resource provider found for location 'swedencentral' and API version '2023-05-01' for type 'jobs'. The supported api-versions are '2025-01-01'." {
		t.Fatalf("an old api-version: %d %s", resp.StatusCode, b)
	}
	// An injected error without retry is the caller's.
	r.f.Inject(acafake.Fault{Method: "GET", PathSuffix: "/jobs/job-t", Status: http.StatusForbidden, Code: "AuthorizationFailed"})
	_, err = r.clients.NewJobsClient().Get(r.ctx, rg, "job-t", nil)
	if re := responseError(t, err); re.StatusCode != http.StatusForbidden || re.ErrorCode != "AuthorizationFailed" {
		t.Fatalf("injected 403: %v", err)
	}
}

// Starting beyond the environment's GPU quota fails with the quota's name
// and limit; the usages API counts the running one.
func TestQuota(t *testing.T) {
	r := newRig(t)
	image := r.pushProbe(t)
	spec := r.jobSpec(image, "gpu-t4", "wait", "/var/run/devgpu/agent-secret")
	r.create(t, "job-1", spec)
	r.create(t, "job-2", spec)
	r.start(t, "job-1")
	_, err := r.clients.NewJobsClient().BeginStart(r.ctx, rg, "job-2", nil)
	re := responseError(t, err)
	if re.StatusCode != http.StatusBadRequest || re.ErrorCode != "QuotaExceeded" || !strings.Contains(err.Error(), "Managed Environment Consumption T4 Gpus") || !strings.Contains(err.Error(), "limit 1") {
		t.Fatalf("start beyond quota: %v", err)
	}
	pager := r.clients.NewManagedEnvironmentUsagesClient().NewListPager(rg, env, nil)
	page, err := pager.NextPage(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var t4Usage *armappcontainers.Usage
	for _, u := range page.Value {
		if *u.Name.LocalizedValue == "Managed Environment Consumption T4 Gpus" {
			t4Usage = u
		}
	}
	if t4Usage == nil || *t4Usage.CurrentValue != 1 || *t4Usage.Limit != 1 {
		t.Fatalf("T4 usage %+v with one running (usages %v)", t4Usage, page.Value)
	}
}

// ARM refuses a request without a token (401 AuthenticationFailed) and
// one with a token it did not issue (401 InvalidAuthenticationToken).
func TestUnauthenticated(t *testing.T) {
	r := newRig(t)
	u := r.f.ARMEndpoint() + "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.App/jobs?api-version=2025-01-01"
	resp, err := r.f.HTTPClient().Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("x-ms-error-code") != "AuthenticationFailed" {
		t.Fatalf("no token: %d %s", resp.StatusCode, resp.Header.Get("x-ms-error-code"))
	}
	clients, err := armappcontainers.NewClientFactory(sub, staticToken("forged"), &arm.ClientOptions{ClientOptions: r.f.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = clients.NewJobsClient().Get(r.ctx, rg, "x", nil)
	if re := responseError(t, err); re.StatusCode != http.StatusUnauthorized || re.ErrorCode != "InvalidAuthenticationToken" {
		t.Fatalf("forged token: %v", err)
	}
}

// Credential gets tokens from the identity endpoint without the
// process's environment, and ARM takes them.
func TestCredential(t *testing.T) {
	r := newRig(t)
	clients, err := armappcontainers.NewClientFactory(sub, r.f.Credential(), &arm.ClientOptions{ClientOptions: r.f.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clients.NewManagedEnvironmentsClient().Get(r.ctx, rg, env, nil); err != nil {
		t.Fatal(err)
	}
}

// A token the identity endpoint issued for another audience (ACR's) is
// refused by ARM with InvalidAuthenticationTokenAudience.
func TestWrongAudience(t *testing.T) {
	r := newRig(t)
	tok, err := r.f.Credential().GetToken(r.ctx, policy.TokenRequestOptions{Scopes: []string{"https://containerregistry.azure.net/.default"}})
	if err != nil {
		t.Fatal(err)
	}
	clients, err := armappcontainers.NewClientFactory(sub, staticToken(tok.Token), &arm.ClientOptions{ClientOptions: r.f.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = clients.NewJobsClient().Get(r.ctx, rg, "x", nil)
	if re := responseError(t, err); re.StatusCode != http.StatusUnauthorized || re.ErrorCode != "InvalidAuthenticationTokenAudience" {
		t.Fatalf("a token for ACR at ARM: %v", err)
	}
}

type staticToken string

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// The registry wants ACR's token exchange: an anonymous push is refused;
// an AAD token from the identity endpoint exchanged at /oauth2/exchange
// is a refresh token that ggcr uses as an IdentityToken
// (https://github.com/Azure/acr/blob/main/docs/AAD-OAuth.md).
func TestRegistryExchange(t *testing.T) {
	r := newRig(t)
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.f.Registry() + "/devgpu/sessions:t1")
	if err != nil {
		t.Fatal(err)
	}
	tr := r.f.HTTPClient().Transport
	if err := remote.Write(ref, img, remote.WithTransport(tr), remote.WithContext(r.ctx)); err == nil {
		t.Fatal("an anonymous push was accepted")
	}
	tok, err := r.cred.GetToken(r.ctx, policy.TokenRequestOptions{Scopes: []string{"https://management.core.windows.net//.default"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := r.f.HTTPClient().PostForm("https://"+r.f.Registry()+"/oauth2/exchange", url.Values{
		"grant_type": {"access_token"}, "service": {r.f.Registry()}, "access_token": {tok.Token},
	})
	if err != nil {
		t.Fatal(err)
	}
	var ex struct {
		RefreshToken string `json:"refresh_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&ex)
	resp.Body.Close()
	if err != nil || ex.RefreshToken == "" {
		t.Fatalf("exchange: %d %v", resp.StatusCode, err)
	}
	auth := authn.FromConfig(authn.AuthConfig{IdentityToken: ex.RefreshToken})
	if err := remote.Write(ref, img, remote.WithTransport(tr), remote.WithAuth(auth), remote.WithContext(r.ctx)); err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref, remote.WithTransport(tr), remote.WithAuth(auth), remote.WithContext(r.ctx))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	got, _ := pulled.Digest()
	if got != want {
		t.Fatalf("pulled %s, pushed %s", got, want)
	}
	// A token the identity endpoint did not issue is no good.
	resp, err = r.f.HTTPClient().PostForm("https://"+r.f.Registry()+"/oauth2/exchange", url.Values{
		"grant_type": {"access_token"}, "service": {r.f.Registry()}, "access_token": {"forged"},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("exchange of a forged token: %d", resp.StatusCode)
	}
}

// A create that nobody polls (a control plane restarted between its PUT
// and its polls) still ends: reading the job advances it, as clients may
// follow a job's provisioningState instead of the operation.
func TestUnpolledCreate(t *testing.T) {
	r := newRig(t)
	jobs := r.clients.NewJobsClient()
	if _, err := jobs.BeginCreateOrUpdate(r.ctx, rg, "job-u", r.jobSpec(r.f.Registry()+"/x:1", "Consumption", "0"), nil); err != nil {
		t.Fatal(err)
	}
	// The poller is dropped.
	testutil.Eventually(t, testutil.WaitShort, "job-u Succeeded", func() bool {
		j, err := jobs.Get(r.ctx, rg, "job-u", nil)
		if err != nil {
			t.Fatal(err)
		}
		return *j.Properties.ProvisioningState == armappcontainers.JobProvisioningStateSucceeded
	})
	for k := range r.f.Requests() {
		if strings.Contains(k, "/containerappsjobOperationStatuses/") {
			t.Fatalf("the operation was polled: %s", k)
		}
	}
	dp, err := jobs.BeginDelete(r.ctx, rg, "job-u", nil)
	if err != nil {
		t.Fatalf("delete after an unpolled create: %v", err)
	}
	if _, err := dp.PollUntilDone(r.ctx, poll); err != nil {
		t.Fatal(err)
	}
	// A list advances a create the same way.
	if _, err := jobs.BeginCreateOrUpdate(r.ctx, rg, "job-l", r.jobSpec(r.f.Registry()+"/x:1", "Consumption", "0"), nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitShort, "job-l Succeeded in the list", func() bool {
		page, err := jobs.NewListByResourceGroupPager(rg, nil).NextPage(r.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(page.Value) == 1 && *page.Value[0].Properties.ProvisioningState == armappcontainers.JobProvisioningStateSucceeded
	})
}

// The 202 of a start has no body; the JobExecutionBase comes with the
// final poll's 200. A new execution is Processing or Running, Running once
// its process runs.
func TestStartAnswers(t *testing.T) {
	r := newRig(t)
	image := r.pushProbe(t)
	r.create(t, "job-s", r.jobSpec(image, "Consumption", "wait", "/var/run/devgpu/agent-secret"))
	var resp *http.Response
	p, err := r.clients.NewJobsClient().BeginStart(runtime.WithCaptureResponse(r.ctx, &resp), rg, "job-s", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp == nil || resp.StatusCode != http.StatusAccepted || resp.Header.Get("Location") == "" {
		t.Fatalf("start answered %v", resp)
	}
	if b, _ := io.ReadAll(resp.Body); len(b) != 0 {
		t.Fatalf("the start's 202 has a body: %s", b)
	}
	var final *http.Response
	res, err := p.PollUntilDone(runtime.WithCaptureResponse(r.ctx, &final), poll)
	if err != nil {
		t.Fatal(err)
	}
	if final.StatusCode != http.StatusOK || res.Name == nil || !strings.HasPrefix(*res.Name, "job-s-") || *res.ID != "/subscriptions/"+sub+"/resourceGroups/"+rg+"/providers/Microsoft.App/jobs/job-s/executions/"+*res.Name {
		t.Fatalf("final poll %d: %+v", final.StatusCode, res)
	}
	// 7 lower-case letters and digits after the job's name (Job_Start.json).
	suffix := strings.TrimPrefix(*res.Name, "job-s-")
	if len(suffix) != 7 || strings.Trim(suffix, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
		t.Fatalf("execution name %s", *res.Name)
	}
	st := *r.execution(t, "job-s", *res.Name).Properties.Status
	if st != armappcontainers.JobExecutionRunningStateProcessing && st != armappcontainers.JobExecutionRunningStateRunning {
		t.Fatalf("a new execution is %s", st)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the process", func() bool {
		s, _ := r.f.Execution("job-s")
		return s.PID != 0
	})
	if st := *r.execution(t, "job-s", *res.Name).Properties.Status; st != armappcontainers.JobExecutionRunningStateRunning {
		t.Fatalf("with its process started, the execution is %s", st)
	}
}

// Fault.FailOperation fails the operation the request begins: its poll
// answers Failed with the error, and the operation takes no effect.
func TestFailOperation(t *testing.T) {
	r := newRig(t)
	image := r.pushProbe(t)
	jobs := r.clients.NewJobsClient()
	spec := r.jobSpec(image, "Consumption", "wait", "/var/run/devgpu/agent-secret")

	r.f.Inject(acafake.Fault{Method: "PUT", PathSuffix: "/jobs/job-f", FailOperation: true, Code: "InternalServerError", Message: "Creating failed."})
	p, err := jobs.BeginCreateOrUpdate(r.ctx, rg, "job-f", spec, nil)
	if err != nil {
		t.Fatalf("the PUT itself is accepted: %v", err)
	}
	_, err = p.PollUntilDone(r.ctx, poll)
	if re := responseError(t, err); re.ErrorCode != "InternalServerError" || !strings.Contains(err.Error(), "Creating failed.") {
		t.Fatalf("failed create: %v", err)
	}
	j, err := jobs.Get(r.ctx, rg, "job-f", nil)
	if err != nil || *j.Properties.ProvisioningState != armappcontainers.JobProvisioningStateFailed {
		t.Fatalf("job after a failed create: %v %v", err, j.Properties)
	}

	r.create(t, "job-f", spec)
	r.f.Inject(acafake.Fault{Method: "POST", PathSuffix: "/jobs/job-f/start", FailOperation: true, Code: "ContainerAppOperationError", Message: "Starting failed."})
	sp, err := jobs.BeginStart(r.ctx, rg, "job-f", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sp.PollUntilDone(r.ctx, poll)
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || re.ErrorCode != "ContainerAppOperationError" || !strings.Contains(err.Error(), "Starting failed.") {
		t.Fatalf("failed start: %v", err)
	}
	if _, ok := r.f.Execution("job-f"); ok {
		t.Fatal("a failed start made an execution")
	}

	execName := r.start(t, "job-f")
	r.f.Inject(acafake.Fault{Method: "DELETE", PathSuffix: "/jobs/job-f", FailOperation: true, Status: http.StatusConflict, Code: "Conflict", Message: "Deleting failed."})
	dp, err := jobs.BeginDelete(r.ctx, rg, "job-f", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dp.PollUntilDone(r.ctx, poll)
	if re := responseError(t, err); re.StatusCode != http.StatusConflict || !strings.Contains(err.Error(), "Deleting failed.") {
		t.Fatalf("failed delete: %v", err)
	}
	if _, err := jobs.Get(r.ctx, rg, "job-f", nil); err != nil {
		t.Fatalf("the job is gone after a failed delete: %v", err)
	}
	if st := *r.execution(t, "job-f", execName).Properties.Status; st != armappcontainers.JobExecutionRunningStateRunning && st != armappcontainers.JobExecutionRunningStateProcessing {
		t.Fatalf("a failed delete ended the execution: %s", st)
	}
}

// Everything an execution's process started ends with the replica, even
// in a session of its own: at a stop, a crash, and the process's own
// exit.
func TestDescendantsEnd(t *testing.T) {
	r := newRig(t)
	image := r.pushProbe(t)
	child := func(job string) int {
		t.Helper()
		var pid int
		testutil.Eventually(t, testutil.WaitMedium, job+"'s child", func() bool {
			out := r.f.Output(job)
			i := strings.Index(out, "child=")
			if i < 0 {
				return false
			}
			line, _, _ := strings.Cut(out[i+len("child="):], "\n")
			_, err := fmt.Sscan(line, &pid)
			return err == nil && testutil.ProcessAlive(pid)
		})
		return pid
	}
	gone := func(what string, pid int) {
		t.Helper()
		testutil.Eventually(t, testutil.WaitShort, what+": child "+strconv.Itoa(pid)+" ends", func() bool { return !testutil.ProcessAlive(pid) })
	}

	r.create(t, "job-stop", r.jobSpec(image, "Consumption", "spawn", "/var/run/devgpu/agent-secret"))
	execName := r.start(t, "job-stop")
	pid := child("job-stop")
	sp, err := r.clients.NewJobsClient().BeginStopExecution(r.ctx, rg, "job-stop", execName, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.PollUntilDone(r.ctx, poll); err != nil {
		t.Fatal(err)
	}
	gone("stop", pid)

	r.create(t, "job-crash", r.jobSpec(image, "Consumption", "spawn", "/var/run/devgpu/agent-secret"))
	r.start(t, "job-crash")
	pid = child("job-crash")
	if err := r.f.Crash("job-crash"); err != nil {
		t.Fatal(err)
	}
	gone("crash", pid)

	r.create(t, "job-exit", r.jobSpec(image, "Consumption", "spawn-exit", "/var/run/devgpu/agent-secret"))
	execName = r.start(t, "job-exit")
	pid = child("job-exit")
	testutil.Eventually(t, testutil.WaitShort, "the fake tracks the child", func() bool { return r.f.Tracked("job-exit", pid) })
	if err := os.WriteFile(filepath.Join(r.f.Env("job-exit")["HOME"], "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.waitStatus(t, "job-exit", execName, armappcontainers.JobExecutionRunningStateSucceeded)
	gone("exit", pid)
}
