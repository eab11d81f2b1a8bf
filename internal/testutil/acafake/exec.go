//go:build linux && !agentonly

package acafake

import (
	"archive/tar"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	armappcontainers "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/appcontainers/armappcontainers/v3"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// stopGrace is how long a stopped execution's process has between
// SIGTERM and SIGKILL. Container Apps gives a replica
// terminationGracePeriodSeconds (30s by default) before it kills it
// (https://learn.microsoft.com/azure/container-apps/containers); the fake
// keeps it short for tests.
const stopGrace = time.Second

// execution is one job execution: a local process standing for the
// replica.
type execution struct {
	f         *Fake
	job       string
	name, id  string
	spec      armappcontainers.Job // the job as it was at start, secrets included
	container *armappcontainers.JobExecutionContainer
	gpu       string // NVIDIA_VISIBLE_DEVICES, "" off GPU profiles
	ptype     string
	start     time.Time
	done      chan struct{}
	out       *tail

	// Under f.mu.
	status, reason string
	end            time.Time
	pid            int
	proc           *os.Process
	env            map[string]string
	stopReq        bool
	crashReq       bool
	// exited is set once cmd.Wait has reaped the process: from then on
	// nothing signals its pid.
	exited bool

	// tracked are the descendants of the process seen so far (pid ->
	// start time), under treeMu: they are killed when the process ends,
	// though by then the kernel has given them to another parent.
	treeMu  sync.Mutex
	tracked map[int]uint64
	// mainStart is the process's start time (/proc), 0 until wait read
	// it; under treeMu.
	mainStart uint64
}

// running reports whether the execution has not ended: Processing while
// its replica is being set up (the image pulled), Running once its
// process started (under f.mu).
func (e *execution) running() bool {
	return e.status == string(armappcontainers.JobExecutionRunningStateRunning) ||
		e.status == string(armappcontainers.JobExecutionRunningStateProcessing)
}

// ended reports whether the execution has ended and its process is gone
// (under f.mu).
func (e *execution) ended() bool { return !e.running() }

// executionSuffix is the random part of an execution's name: 7 lower-case
// letters and digits, as in the REST spec's example
// (specification/app/resource-manager/Microsoft.App/stable/2025-01-01/
// examples/Job_Start.json: "testcontainerappsjob0-pjxhsye"); the alphabet
// beyond that example is assumed.
func executionSuffix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 7)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// newExecution adds a Processing execution to j, with a simulated GPU
// that no running execution of the same profile type holds. Under f.mu.
func (f *Fake) newExecution(j *job, ptype string) *execution {
	var spec armappcontainers.Job
	b, _ := json.Marshal(j.spec)
	_ = json.Unmarshal(b, &spec)
	c := spec.Properties.Template.Containers[0]
	e := &execution{
		f:     f,
		job:   j.name,
		name:  j.name + "-" + executionSuffix(),
		spec:  spec,
		ptype: ptype,
		start: time.Now().UTC(),
		done:  make(chan struct{}),
		out:   &tail{max: 64 << 10},
		container: &armappcontainers.JobExecutionContainer{
			Name: c.Name, Image: c.Image, Command: c.Command, Args: c.Args, Env: c.Env, Resources: c.Resources,
		},
		// Processing until the process has started (JobExecutionRunningState:
		// Processing, Running, ...).
		status:  string(armappcontainers.JobExecutionRunningStateProcessing),
		tracked: map[int]uint64{},
	}
	e.id = f.jobID(j.name) + "/executions/" + e.name
	if m := gpuModel(ptype); m != "" {
		used := map[string]bool{}
		for _, oj := range f.jobs {
			for _, oe := range oj.executions {
				if oe.running() && oe.ptype == ptype {
					used[oe.gpu] = true
				}
			}
		}
		for n := 0; ; n++ {
			id := fmt.Sprintf("GPU-sim-%s-%d", strings.ToLower(m), n)
			if !used[id] {
				e.gpu = id
				break
			}
		}
	}
	j.executions = append(j.executions, e)
	f.log.Info("acafake: execution started", "job", j.name, "execution", e.name, "gpu", e.gpu)
	return e
}

// launch prepares and runs the execution's process, then waits for it.
func (e *execution) launch() {
	f := e.f
	defer f.wg.Done()
	dir := filepath.Join(f.opts.Dir, "exec-"+e.name)
	argv, env, err := e.prepare(dir)

	f.mu.Lock()
	if err == nil && !e.stopReq && !e.crashReq {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = dir
		cmd.Env = make([]string, 0, len(env))
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		cmd.Stdout, cmd.Stderr = e.out, e.out
		// A descendant the kill missed could hold the output pipe open;
		// Wait gives up on it after this long.
		cmd.WaitDelay = stopGrace
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		e.env = env
		if err = cmd.Start(); err == nil {
			e.proc, e.pid = cmd.Process, cmd.Process.Pid
			e.status = string(armappcontainers.JobExecutionRunningStateRunning)
			f.mu.Unlock()
			e.wait(cmd)
			return
		}
		err = fmt.Errorf("starting %s: %w", argv[0], err)
	}
	e.status = string(armappcontainers.JobExecutionRunningStateFailed)
	if e.stopReq && !e.crashReq && err == nil {
		e.status = string(armappcontainers.JobExecutionRunningStateStopped)
	}
	if e.crashReq && err == nil {
		err = errors.New("the replica was lost before its process started")
	}
	if err != nil {
		e.reason = err.Error()
		f.log.Warn("acafake: execution failed before its process ran", "job", e.job, "execution", e.name, "reason", e.reason)
	}
	e.end = time.Now().UTC()
	f.mu.Unlock()
	close(e.done)
}

// trackEvery is how often the fake records the process's descendants.
// One started and orphaned within this time of the process's own end can
// escape the kill that ends the replica: a limit of the fake, which has
// no container (cgroup) to end.
const trackEvery = 20 * time.Millisecond

// track records the descendants of the process (pid, started at start)
// until stop is closed.
func (e *execution) track(pid int, start uint64, stop <-chan struct{}) {
	t := time.NewTicker(trackEvery)
	defer t.Stop()
	for {
		e.snapshot()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// snapshot records the process's descendants now, if the process is
// still the one that started.
func (e *execution) snapshot() {
	e.treeMu.Lock()
	defer e.treeMu.Unlock()
	if e.mainStart != 0 && same(e.pid, e.mainStart) {
		descendants(procTable(), []int{e.pid}, e.tracked)
	}
}

// killTree ends the replica: SIGKILL to the process, if it has not been
// reaped, and to every descendant of it, including those that left its
// process group or session. It reports whether the process was
// signalled. Under f.mu.
func (e *execution) killTree() bool {
	signalled := false
	var extra []int
	if e.proc != nil && !e.exited {
		// os.Process signals through a pidfd: a process Wait has reaped
		// answers ErrProcessDone, and no other process with its pid is
		// touched.
		if e.proc.Signal(syscall.SIGSTOP) == nil {
			signalled = true
			extra = append(extra, e.proc.Pid)
		}
	}
	e.treeMu.Lock()
	killAll(e.tracked, extra...)
	e.treeMu.Unlock()
	if signalled {
		_ = e.proc.Signal(syscall.SIGKILL)
	}
	return signalled
}

// wait waits for the process, enforcing the job's replicaTimeout, and
// records how the execution ended: Stopped when it was stopped,
// Succeeded on status 0, Failed otherwise. Whatever the process started
// ends with it, as everything in a replica's container does. Jobs are
// never restarted here (the runtime sets replicaRetryLimit 0).
func (e *execution) wait(cmd *exec.Cmd) {
	f := e.f
	stopTracking := make(chan struct{})
	tracking := make(chan struct{})
	if p, ok := readProc(cmd.Process.Pid); ok {
		e.treeMu.Lock()
		e.mainStart = p.start
		e.treeMu.Unlock()
		go func() {
			defer close(tracking)
			e.track(p.pid, p.start, stopTracking)
		}()
	} else {
		close(tracking)
	}
	timeout := time.Duration(*e.spec.Properties.Configuration.ReplicaTimeout) * time.Second
	timedOut := false
	timer := time.AfterFunc(timeout, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		// A process Wait reaped already ended by itself.
		if !e.exited && e.killTree() {
			timedOut = true
		}
	})
	err := cmd.Wait()
	timer.Stop()
	close(stopTracking)
	<-tracking
	f.mu.Lock()
	e.exited = true
	e.killTree()
	switch {
	case e.stopReq:
		e.status = string(armappcontainers.JobExecutionRunningStateStopped)
	case err == nil:
		e.status = string(armappcontainers.JobExecutionRunningStateSucceeded)
	default:
		e.status = string(armappcontainers.JobExecutionRunningStateFailed)
		e.reason = err.Error()
		if timedOut {
			e.reason = "the replica ran past the job's replicaTimeout"
		} else if e.crashReq {
			e.reason = "the replica was lost (" + err.Error() + ")"
		}
	}
	e.end = time.Now().UTC()
	status := e.status
	f.mu.Unlock()
	f.log.Info("acafake: execution ended", "job", e.job, "execution", e.name, "status", status, "exit", fmt.Sprint(err), "output", e.out.String())
	close(e.done)
}

// stop ends the execution as the platform stops a replica: SIGTERM to its
// main process, then, after stopGrace, SIGKILL to it and everything it
// started; it returns when the process is gone. Kubernetes, on which
// Container Apps runs, sends SIGTERM to each container's main process
// and kills what is left after the grace period
// (https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination);
// that Container Apps' stop of an execution does exactly this was NOT
// confirmed. A stop that finds the process already reaped records
// nothing: the execution keeps the status its exit gave it.
func (e *execution) stop() {
	f := e.f
	f.mu.Lock()
	switch {
	case e.ended() || e.exited:
	case e.proc == nil:
		// Not started yet: launch gives up, and the execution is Stopped.
		e.stopReq = true
	default:
		// What the process started so far ends with it, even when it
		// exits at the SIGTERM before the next look at its descendants.
		e.snapshot()
		e.stopReq = true
		if err := e.proc.Signal(syscall.SIGTERM); err != nil {
			// Reaped (ErrProcessDone): it ended by itself.
			e.stopReq = false
		}
	}
	f.mu.Unlock()
	select {
	case <-e.done:
	case <-time.After(stopGrace):
		f.mu.Lock()
		if !e.exited {
			e.killTree()
		}
		f.mu.Unlock()
	}
	<-e.done
}

// terminate is stop, for Close and deletes.
func (e *execution) terminate() { e.stop() }

// kill ends the replica at once, as one lost with its node: SIGKILL to
// the process and everything it started.
func (e *execution) kill() {
	f := e.f
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case e.exited:
	case e.proc == nil:
		// Not started yet: launch gives up, and the execution fails.
		e.crashReq = true
	default:
		e.crashReq = e.killTree()
	}
}

// prepare pulls the image, extracts the command's file, writes the
// secret volumes and works out the command line and environment.
func (e *execution) prepare(dir string) (argv []string, env map[string]string, err error) {
	f := e.f
	props := e.spec.Properties
	c := props.Template.Containers[0]
	image := str(c.Image)
	if err := f.checkPullCredentials(image, props.Configuration); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "home"), 0o755); err != nil {
		return nil, nil, err
	}
	command := make([]string, 0, len(c.Command)+len(c.Args))
	for _, s := range append(append([]*string(nil), c.Command...), c.Args...) {
		command = append(command, str(s))
	}
	bin, err := f.extract(image, command[0], dir)
	if err != nil {
		return nil, nil, err
	}

	secrets := map[string]string{}
	for _, s := range props.Configuration.Secrets {
		secrets[str(s.Name)] = str(s.Value)
	}
	mounts := map[string]string{} // mountPath -> local directory
	volumes := map[string]*armappcontainers.Volume{}
	for _, v := range props.Template.Volumes {
		volumes[str(v.Name)] = v
	}
	for _, m := range c.VolumeMounts {
		v := volumes[str(m.VolumeName)]
		if v == nil || v.StorageType == nil || *v.StorageType != armappcontainers.StorageTypeSecret {
			// EmptyDir and others: an empty directory.
			local := filepath.Join(dir, "volumes", str(m.VolumeName))
			if err := os.MkdirAll(local, 0o755); err != nil {
				return nil, nil, err
			}
			mounts[str(m.MountPath)] = local
			continue
		}
		local := filepath.Join(dir, "volumes", str(v.Name))
		if err := os.MkdirAll(local, 0o700); err != nil {
			return nil, nil, err
		}
		// A Secret volume holds the secrets it lists, at their paths (by
		// default the secret's name), or every secret of the job when it
		// lists none (models.go Volume.Secrets, SecretVolumeItem.Path).
		items := v.Secrets
		if len(items) == 0 {
			for n := range secrets {
				items = append(items, &armappcontainers.SecretVolumeItem{SecretRef: to.Ptr(n)})
			}
		}
		for _, it := range items {
			p := str(it.Path)
			if p == "" {
				p = str(it.SecretRef)
			}
			file := filepath.Join(local, filepath.Clean("/"+p))
			if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
				return nil, nil, err
			}
			if err := os.WriteFile(file, []byte(secrets[str(it.SecretRef)]), 0o400); err != nil {
				return nil, nil, err
			}
		}
		if sp := str(m.SubPath); sp != "" {
			local = filepath.Join(local, filepath.Clean("/"+sp))
		}
		mounts[str(m.MountPath)] = local
	}

	argv = []string{bin}
	for _, a := range command[1:] {
		for mp, local := range mounts {
			if a == mp || strings.HasPrefix(a, strings.TrimSuffix(mp, "/")+"/") {
				a = local + strings.TrimPrefix(a, strings.TrimSuffix(mp, "/"))
			} else if i := strings.Index(a, "="+mp); i >= 0 {
				a = a[:i+1] + local + a[i+1+len(mp):]
			}
		}
		argv = append(argv, a)
	}

	env = map[string]string{
		"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME": filepath.Join(dir, "home"),
	}
	for _, v := range c.Env {
		if v.SecretRef != nil {
			env[str(v.Name)] = secrets[*v.SecretRef]
		} else {
			env[str(v.Name)] = str(v.Value)
		}
	}
	if e.gpu != "" {
		env["NVIDIA_VISIBLE_DEVICES"] = e.gpu
	}
	return argv, env, nil
}

// checkPullCredentials refuses an image of the fake registry that the
// job has no credentials for: Container Apps pulls from a private
// registry with the job's configuration.registries entry for its server
// (a managed identity, or a username and password secret)
// (https://learn.microsoft.com/azure/container-apps/managed-identity-image-pull).
func (f *Fake) checkPullCredentials(image string, cfg *armappcontainers.JobConfiguration) error {
	ref, err := name.ParseReference(image)
	if err != nil {
		return fmt.Errorf("image %q is not a valid reference: %w", image, err)
	}
	host := ref.Context().RegistryStr()
	if host != f.Registry() {
		return fmt.Errorf("pulling image %s failed: the fake can pull only from its registry %s", image, f.Registry())
	}
	for _, r := range cfg.Registries {
		if str(r.Server) != host {
			continue
		}
		if strings.EqualFold(str(r.Identity), "system") && !f.opts.SystemIdentityHasAcrPull {
			// The system-assigned identity is made with the job, so no
			// role assignment can give it AcrPull before the job's first
			// pull (https://learn.microsoft.com/azure/container-apps/managed-identity-image-pull:
			// a user-assigned identity is recommended because it can be
			// given AcrPull before the app or job exists).
			return fmt.Errorf("pulling image %s failed: unauthorized: the job pulls from %s with its system-assigned identity, which is new with the job and has no AcrPull role on the registry at its first pull; pull with a user-assigned identity that has AcrPull", image, host)
		}
		if str(r.Identity) != "" || str(r.PasswordSecretRef) != "" {
			return nil
		}
	}
	return fmt.Errorf("pulling image %s failed: unauthorized: the job has no registries entry with an identity or password for %s", image, host)
}

// extract writes the file at file (an absolute path in the image) out of
// image's filesystem into dir, mode 0755, and returns where. Layers are
// applied in order, so the last layer that has the file wins.
func (f *Fake) extract(image, file, dir string) (string, error) {
	img, err := f.pull(image)
	if err != nil {
		return "", fmt.Errorf("pulling image %s failed: %w", image, err)
	}
	want := strings.TrimPrefix(path.Clean("/"+file), "/")
	digest, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("reading image %s: %w", image, err)
	}
	key := digest.String() + " /" + want
	f.extractMu.Lock()
	cached, ok := f.extracted[key]
	f.extractMu.Unlock()
	if ok {
		return cached, nil
	}
	out, err := extractFile(img, image, file, want, dir)
	if err != nil {
		return "", err
	}
	f.extractMu.Lock()
	if f.extracted == nil {
		f.extracted = map[string]string{}
	}
	f.extracted[key] = out
	f.extractMu.Unlock()
	return out, nil
}

// extractFile writes the regular file want of img's filesystem into dir.
func extractFile(img v1.Image, image, file, want, dir string) (string, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("the command %s is not a file in image %s", file, image)
		}
		if err != nil {
			return "", fmt.Errorf("reading image %s: %w", image, err)
		}
		if strings.TrimPrefix(path.Clean("/"+h.Name), "/") != want || h.Typeflag != tar.TypeReg {
			continue
		}
		out := filepath.Join(dir, path.Base(want))
		w, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(w, tr)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		return out, err
	}
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
