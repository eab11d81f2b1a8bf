package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// python is the interpreter for HTTP servers inside sessions: the system's,
// since a session's HOME is its own workspace (pyenv shims look in HOME).
const python = "/usr/bin/python3"

// command runs name with the env's configuration to completion and fails
// the test when it does not exit 0.
func (e *env) command(name string, args ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = e.environ()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// sshConfig writes `devgpu config-ssh` output to a file of its own for
// ssh -F, twice, to see that the second run changes nothing.
func (e *env) sshConfig() string {
	e.t.Helper()
	path := filepath.Join(e.dir, "ssh", "config")
	for range 2 {
		cmd := exec.Command(e.bin, "config-ssh")
		cmd.Env = append(e.environ(), "DEVGPU_SSH_CONFIG="+path)
		if out, err := cmd.CombinedOutput(); err != nil {
			e.t.Fatalf("config-ssh: %v\n%s", err, out)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	if n := strings.Count(string(b), "# --- devgpu start ---"); n != 1 || !strings.Contains(string(b), "Host devgpu.default\n") {
		e.t.Fatalf("config-ssh wrote %d blocks:\n%s", n, b)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		e.t.Fatalf("ssh config mode %v, want 0600", st.Mode())
	}
	return path
}

// workspace is a local-runtime session's working directory and HOME.
func (e *env) workspace(id string) string {
	return filepath.Join(e.dir, "data", "sessions", id, "home")
}

func writeRandom(t *testing.T, path string, size int64, seed uint64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	src := rand.NewChaCha8([32]byte{byte(seed)})
	if _, err := io.CopyN(io.MultiWriter(f, h), src, size); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// startBackground starts a long-running command with the env's
// configuration; the test's end kills it.
func (e *env) startBackground(stderr io.Writer, name string, args ...string) *exec.Cmd {
	e.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = e.environ()
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// waitExit waits for a command of startBackground to exit and returns
// what Wait returns; the test fails if it keeps running.
func (e *env) waitExit(cmd *exec.Cmd) error {
	e.t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(testutil.WaitMedium):
		_ = cmd.Process.Kill()
		<-done
		e.t.Fatalf("%s did not exit within %s", strings.Join(cmd.Args, " "), testutil.WaitMedium)
		return nil
	}
}

func httpGet(url string) (string, error) {
	c := &http.Client{Timeout: testutil.WaitShort}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}

// The real OpenSSH client against `devgpu config-ssh` output: exec, scp,
// sftp, rsync and ssh -L, and the session's end with the last connection.
func TestOpenSSH(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	cfg := e.sshConfig()
	ssh := func(args ...string) string {
		t.Helper()
		return e.command("ssh", append([]string{"-F", cfg}, args...)...)
	}

	// Dedicated mode: one command, one session, which ends with the
	// connection (ssh does not wait for its ProxyCommand to finish).
	out := ssh("devgpu.default", "echo gpu=$CUDA_VISIBLE_DEVICES")
	all := e.sessions()
	if len(all) != 1 || strings.TrimSpace(out) != "gpu="+strings.Join(all[0].GPUs, ",") {
		t.Fatalf("ssh printed %q; sessions %+v", out, all)
	}
	e.waitSession(all[0].ID, testutil.WaitShort, "to end (closed) soon after ssh returns", func(s sdk.Session) bool {
		return s.State == sdk.StateEnded && s.EndReason == sdk.ReasonClosed
	})

	// Shared mode: every connection below joins the one session that the
	// first keeps open, which serves HTTP inside the session.
	e.admin("project", "update", "default", "--shell-mode", "shared")
	port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	holder := e.startBackground(io.Discard, "ssh", "-F", cfg, "devgpu.default",
		"exec "+python+" -m http.server "+port+" --bind 127.0.0.1")
	var id string
	testutil.Eventually(t, testutil.WaitMedium, "the holder's session to run", func() bool {
		if r := e.running(); len(r) == 1 {
			id = r[0].ID
			return true
		}
		return false
	})
	ws := e.workspace(id)

	dir := t.TempDir()
	local := filepath.Join(dir, "local.bin")
	sum := writeRandom(t, local, 3<<20, 1)
	e.command("scp", "-F", cfg, local, "devgpu.default:up.bin")
	if got := fileSum(t, filepath.Join(ws, "up.bin")); got != sum {
		t.Fatalf("scp upload: sha256 %s, want %s", got, sum)
	}
	e.command("scp", "-F", cfg, "devgpu.default:up.bin", filepath.Join(dir, "down.bin"))
	if got := fileSum(t, filepath.Join(dir, "down.bin")); got != sum {
		t.Fatalf("scp download: sha256 %s, want %s", got, sum)
	}

	batch := filepath.Join(dir, "batch")
	if err := os.WriteFile(batch, []byte("mkdir sdir\nput "+local+" sdir/a.bin\nls sdir\nrename sdir/a.bin sdir/b.bin\nget sdir/b.bin "+filepath.Join(dir, "sftp.bin")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := e.command("sftp", "-F", cfg, "-b", batch, "devgpu.default"); !strings.Contains(out, "sdir/a.bin") {
		t.Errorf("sftp ls printed:\n%s", out)
	}
	if got := fileSum(t, filepath.Join(dir, "sftp.bin")); got != sum {
		t.Fatalf("sftp get: sha256 %s, want %s", got, sum)
	}

	tree := filepath.Join(dir, "tree")
	for _, p := range []string{"a.txt", "sub/b.txt", "sub/deeper/c.txt"} {
		_ = os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755)
		if err := os.WriteFile(filepath.Join(tree, p), []byte("content of "+p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.command("rsync", "-e", "ssh -F "+cfg, "-a", tree+"/", "devgpu.default:rtree/")
	if out := ssh("devgpu.default", "cat rtree/sub/deeper/c.txt"); out != "content of sub/deeper/c.txt" {
		t.Errorf("after rsync: %q", out)
	}

	// ssh -L to the HTTP server in the session.
	lport := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	fwd := e.startBackground(io.Discard, "ssh", "-F", cfg, "-N", "-L", lport+":127.0.0.1:"+port, "devgpu.default")
	var body string
	testutil.Eventually(t, testutil.WaitMedium, "HTTP through ssh -L", func() bool {
		var err error
		body, err = httpGet("http://127.0.0.1:" + lport + "/")
		return err == nil
	})
	if !strings.Contains(body, "up.bin") || !strings.Contains(body, "rtree/") {
		t.Errorf("directory listing through ssh -L:\n%s", body)
	}
	_ = fwd.Process.Signal(syscall.SIGTERM)
	_ = e.waitExit(fwd)

	// Every connection but the holder's is gone; closing it ends the session.
	e.waitSession(id, testutil.WaitMedium, "to have only the holder attached", func(s sdk.Session) bool { return s.Attachments == 1 })
	_ = holder.Process.Signal(syscall.SIGTERM)
	_ = e.waitExit(holder)
	e.waitSession(id, testutil.WaitShort, "to end (closed) after the last SSH connection", func(s sdk.Session) bool {
		return s.State == sdk.StateEnded && s.EndReason == sdk.ReasonClosed
	})
}

// devgpu cp both ways through a running session: a large file, a tree,
// clear errors, and no truncated file after an interrupted upload.
func TestCp(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	if r := e.cli("cp", "x", ":x"); r.code != 255 || !strings.Contains(r.stderr, "no running session") {
		t.Fatalf("cp without a session: %d %q", r.code, r.stderr)
	}
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	ws := e.workspace(id)
	dir := t.TempDir()

	big := filepath.Join(dir, "big.bin")
	sum := writeRandom(t, big, 200<<20, 2)
	if r := e.cli("cp", big, ":big.bin"); r.code != 0 {
		t.Fatalf("cp upload: %d %s", r.code, r.stderr)
	}
	if got := fileSum(t, filepath.Join(ws, "big.bin")); got != sum {
		t.Fatalf("uploaded sha256 %s, want %s", got, sum)
	}
	if r := e.cli("cp", id+":big.bin", filepath.Join(dir, "back.bin")); r.code != 0 || r.stderr != "" {
		t.Fatalf("cp download: %d %q", r.code, r.stderr)
	}
	if got := fileSum(t, filepath.Join(dir, "back.bin")); got != sum {
		t.Fatalf("downloaded sha256 %s, want %s", got, sum)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(ws, ".*.part")); len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	tree := filepath.Join(dir, "tree")
	files := map[string]string{"a.txt": "A", "sub/b.txt": "B", "sub/deeper/c.txt": "C"}
	for p, c := range files {
		_ = os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755)
		if err := os.WriteFile(filepath.Join(tree, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if r := e.cli("cp", tree, ":"); r.code != 255 || !strings.Contains(r.stderr, "use cp -r") {
		t.Errorf("cp of a directory without -r: %d %q", r.code, r.stderr)
	}
	if r := e.cli("cp", "-r", tree, ":"); r.code != 0 {
		t.Fatalf("cp -r upload: %d %s", r.code, r.stderr)
	}
	if r := e.cli("cp", "-r", ":tree", filepath.Join(dir, "tree2")); r.code != 0 {
		t.Fatalf("cp -r download: %d %s", r.code, r.stderr)
	}
	for p, c := range files {
		for _, root := range []string{filepath.Join(ws, "tree"), filepath.Join(dir, "tree2")} {
			if b, err := os.ReadFile(filepath.Join(root, p)); err != nil || string(b) != c {
				t.Errorf("%s/%s = %q, %v; want %q", root, p, b, err, c)
			}
		}
	}

	for _, args := range [][]string{{":nope.txt", dir}, {filepath.Join(dir, "nope"), ":"}, {big, ":no/such/dir/x"}} {
		r := e.cli(append([]string{"cp"}, args...)...)
		if r.code != 255 || !strings.Contains(r.stderr, "no such file or directory") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("cp %v: %d %q; want one line saying no such file or directory", args, r.code, r.stderr)
		}
	}

	// An upload killed mid-way leaves no file under the final name. Its
	// source is a pipe that stops after 1 MiB, so it is always mid-way.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cp := e.startBackground(io.Discard, e.bin, "cp", fifo, ":killed.bin")
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the upload to be under way", func() bool {
		parts, _ := filepath.Glob(filepath.Join(ws, ".killed.bin.*.part"))
		if len(parts) != 1 {
			return false
		}
		st, err := os.Stat(parts[0])
		return err == nil && st.Size() == 1<<20
	})
	_ = cp.Process.Signal(syscall.SIGKILL)
	_ = e.waitExit(cp)
	if _, err := os.Stat(filepath.Join(ws, "killed.bin")); !os.IsNotExist(err) {
		t.Errorf("killed upload left killed.bin: %v", err)
	}

	tm.send("exit\r")
	tm.wait()
}

// devgpu port-forward to an HTTP server in the session, closed by Ctrl-C.
func TestPortForward(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	tm.send("echo served > index.html; " + python + " -m http.server " + port + " --bind 127.0.0.1 2>/dev/null &\r")
	// port-forward fails at once when nothing serves the port yet (the
	// session shares this machine's network: the server is seen here).
	testutil.Eventually(t, testutil.WaitMedium, "the session's HTTP server to listen", func() bool {
		_, err := httpGet("http://127.0.0.1:" + port + "/")
		return err == nil
	})

	pr, pw := io.Pipe()
	fwd := e.startBackground(pw, e.bin, "port-forward", id, "0:"+port)
	lines := bufio.NewScanner(pr)
	if !lines.Scan() {
		t.Fatal("port-forward printed nothing")
	}
	m := regexp.MustCompile(`http://127\.0\.0\.1:\d+`).FindString(lines.Text())
	if m == "" {
		t.Fatalf("port-forward printed %q, want the local URL", lines.Text())
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	var body string
	testutil.Eventually(t, testutil.WaitMedium, "HTTP through port-forward", func() bool {
		var err error
		body, err = httpGet(m + "/")
		return err == nil
	})
	if body != "served\n" {
		t.Errorf("body %q", body)
	}
	e.waitSession(id, testutil.WaitShort, "to count the forwarder", func(s sdk.Session) bool { return s.Attachments == 2 })

	_ = fwd.Process.Signal(os.Interrupt)
	err := e.waitExit(fwd)
	pw.Close()
	if err != nil {
		t.Fatalf("port-forward after Ctrl-C: %v", err)
	}
	if _, err := httpGet(m + "/"); err == nil {
		t.Error("the local port still answers after Ctrl-C")
	}
	if s := e.session(id); s.Attachments != 1 || s.State != sdk.StateRunning {
		t.Errorf("session after port-forward = %+v, want running with the shell only", s)
	}
	tm.send("exit\r")
	tm.wait()
}
