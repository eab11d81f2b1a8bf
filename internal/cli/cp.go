package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"github.com/devgpu/devgpu/sdk"
)

const (
	// sftpPacket is the payload of one SFTP read or write: the agent serves
	// up to 128 KiB (four times OpenSSH's 32 KiB), fewer round trips.
	sftpPacket = 128 << 10
	// sftpRequests is how many requests per file are in flight at once.
	sftpRequests = 64
	// progressMin is the smallest transfer that gets a progress bar.
	progressMin = 8 << 20
	// interruptGrace is how long an interrupted copy may take to clean up.
	interruptGrace = 2 * time.Second
)

func newCpCmd() *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "cp [-r] SRC DST",
		Short: "Copy files between this machine and a running session",
		Long: `Copy files to or from one of your running sessions over SFTP, through the
same authenticated tunnel as the shell. One side is SESSION:PATH, or :PATH for
your only running session; the other is a local path. A relative PATH starts
in the session's working directory (its HOME). cp uses a running session and
never starts one.

A file arrives under a temporary name in its destination directory and is
renamed when complete, so an interrupted copy never leaves a truncated file
under the final name.`,
		Example: `  devgpu cp data.tar :data.tar
  devgpu cp -r ./dataset 3f9c2a:work/
  devgpu cp :results/model.pt .`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runCp(ctx, args[0], args[1], recursive)
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "copy directories recursively")
	return cmd
}

// location is one side of a copy: a local path, or a path in a session.
type location struct {
	remote  bool
	session string // "" with remote: the caller's only running session
	path    string
	arg     string // as the user wrote it, for messages
}

// parseLocation reads SESSION:PATH or :PATH as remote, like scp: a colon
// before any slash. Everything else is a local path (write ./a:b for a
// local file named a:b).
func parseLocation(arg string) location {
	i := strings.IndexByte(arg, ':')
	if i < 0 || strings.ContainsRune(arg[:i], '/') {
		return location{path: arg, arg: arg}
	}
	p := arg[i+1:]
	switch {
	case p == "" || p == "~":
		p = "."
	case strings.HasPrefix(p, "~/"):
		p = p[2:] // relative paths start in HOME already
	}
	return location{remote: true, session: arg[:i], path: p, arg: arg}
}

func runCp(ctx context.Context, srcArg, dstArg string, recursive bool) error {
	src, dst := parseLocation(srcArg), parseLocation(dstArg)
	if src.remote == dst.remote {
		return errors.New("one of SRC and DST must be SESSION:PATH (or :PATH for your only running session) and the other a local path")
	}
	remote := src
	if dst.remote {
		remote = dst
	}
	conn, _, err := attachRunning(ctx, remote.session)
	if err != nil {
		return err
	}
	defer conn.Close()
	sc, err := newSFTPClient(conn.Client)
	if err != nil {
		return err
	}
	defer sc.Close()
	// Ctrl-C stops the copy at its next chunk, which removes the temporary
	// file; should the session not answer that, give up on the connection.
	stop := context.AfterFunc(ctx, func() {
		time.AfterFunc(interruptGrace, func() { conn.Client.Close() })
	})
	defer stop()

	c := &copier{ctx: ctx, sc: sc, recursive: recursive}
	if dst.remote {
		err = c.upload(src, dst)
	} else {
		err = c.download(src, dst)
	}
	c.bar.finish()
	if err != nil && ctx.Err() != nil {
		return errors.New("interrupted; nothing was left under the destination's name")
	}
	return err
}

// newSFTPClient starts the "sftp" subsystem with large packets and many
// requests in flight, for throughput over a high-latency tunnel.
func newSFTPClient(c *ssh.Client) (*sftp.Client, error) {
	sc, err := sftp.NewClient(c,
		sftp.MaxPacketUnchecked(sftpPacket),
		sftp.MaxConcurrentRequestsPerFile(sftpRequests),
		sftp.UseConcurrentWrites(true),
		sftp.UseConcurrentReads(true),
	)
	if err != nil {
		return nil, fmt.Errorf("start SFTP in the session: %w", err)
	}
	return sc, nil
}

// attachRunning opens an SSH connection to one of the caller's running
// sessions: id's, or with id "" the only one. It never starts a session.
func attachRunning(ctx context.Context, id string) (*sessionConn, sdk.Session, error) {
	client, _, err := newClient()
	if err != nil {
		return nil, sdk.Session{}, err
	}
	var sess sdk.Session
	if id == "" {
		sess, err = onlyRunning(ctx, client)
	} else {
		sess, err = client.Session(ctx, id)
		if err == nil && sess.State != sdk.StateRunning {
			err = fmt.Errorf("session %s is %s, not running", sess.ID, sess.State)
		}
	}
	if err != nil {
		return nil, sess, err
	}
	tunnel, err := client.Connect(ctx, sess.ID)
	if err != nil {
		return nil, sess, err
	}
	conn, err := sshOverTunnel(client, tunnel, sess)
	return conn, sess, err
}

// sshOverTunnel runs the SSH handshake with the session's agent.
func sshOverTunnel(client *sdk.Client, tunnel *sdk.Tunnel, sess sdk.Session) (*sessionConn, error) {
	sshConn, chans, reqs, err := ssh.NewClientConn(tunnel, "devgpu", &ssh.ClientConfig{
		User: sess.User,
		// The server authenticated and authorised the tunnel; the agent's
		// ephemeral key proves nothing more.
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	})
	if err != nil {
		tunnel.Close()
		return nil, fmt.Errorf("SSH handshake with session %s failed: %w", sess.ID, err)
	}
	return &sessionConn{Client: ssh.NewClient(sshConn, chans, reqs), api: client, tunnel: tunnel}, nil
}

func onlyRunning(ctx context.Context, client *sdk.Client) (sdk.Session, error) {
	all, err := client.ListSessions(ctx, false)
	if err != nil {
		return sdk.Session{}, err
	}
	var running []string
	var sess sdk.Session
	for _, s := range all {
		if s.State == sdk.StateRunning {
			running = append(running, s.ID)
			sess = s
		}
	}
	switch len(running) {
	case 0:
		return sess, errors.New("you have no running session; start one with `devgpu shell`, or name one as SESSION:PATH")
	case 1:
		return sess, nil
	default:
		return sess, fmt.Errorf("you have %d running sessions (%s); name one as SESSION:PATH", len(running), strings.Join(running, ", "))
	}
}

// copier copies files and trees between the local filesystem and a
// session's, each file under a temporary name first.
type copier struct {
	ctx       context.Context
	sc        *sftp.Client
	recursive bool
	bar       *progressBar
}

func (c *copier) upload(src, dst location) error {
	st, err := os.Stat(src.path)
	if err != nil {
		return pathError(src.arg, err)
	}
	if st.IsDir() && !c.recursive {
		return fmt.Errorf("%s is a directory; use cp -r to copy it", src.arg)
	}
	target := dst.path
	if dt, err := c.sc.Stat(target); err == nil && dt.IsDir() {
		target = path.Join(target, filepath.Base(filepath.Clean(src.path)))
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return pathError(dst.arg, err)
	} else if strings.HasSuffix(dst.path, "/") {
		return fmt.Errorf("%s: no such directory in the session", dst.arg)
	}
	total, err := localSize(src.path)
	if err != nil {
		return err
	}
	c.bar = newProgressBar(filepath.Base(src.path), total)
	if !st.IsDir() {
		return c.uploadFile(src.path, target, st.Mode(), dst.arg)
	}
	return filepath.WalkDir(src.path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return pathError(p, err)
		}
		rel, _ := filepath.Rel(src.path, p)
		to := path.Join(target, filepath.ToSlash(rel))
		info, err := os.Stat(p) // follow links, like scp -r
		if err != nil {
			return pathError(p, err)
		}
		switch {
		case info.IsDir():
			if err := c.sc.Mkdir(to); err != nil {
				if st, serr := c.sc.Stat(to); serr != nil || !st.IsDir() {
					return pathError(dst.arg+" ("+to+")", err)
				}
			}
			_ = c.sc.Chmod(to, info.Mode().Perm())
			return nil
		case info.Mode().IsRegular():
			return c.uploadFile(p, to, info.Mode(), to)
		default:
			fmt.Fprintf(os.Stderr, "devgpu: skipping %s: not a regular file or directory\n", p)
			return nil
		}
	})
}

func (c *copier) uploadFile(local, remote string, mode fs.FileMode, display string) error {
	in, err := os.Open(local)
	if err != nil {
		return pathError(local, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return pathError(local, err)
	}
	tmp := path.Join(path.Dir(remote), tempName(path.Base(remote)))
	out, err := c.sc.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return pathError(display, err)
	}
	_, err = out.ReadFrom(&countingReader{ctx: c.ctx, r: in, size: st.Size(), bar: c.bar})
	if err == nil {
		err = out.Chmod(mode.Perm())
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = c.sc.PosixRename(tmp, remote)
	}
	if err != nil {
		_ = c.sc.Remove(tmp)
		if c.ctx.Err() != nil {
			return c.ctx.Err()
		}
		return pathError(display, err)
	}
	return nil
}

func (c *copier) download(src, dst location) error {
	st, err := c.sc.Stat(src.path)
	if err != nil {
		return pathError(src.arg, err)
	}
	if st.IsDir() && !c.recursive {
		return fmt.Errorf("%s is a directory; use cp -r to copy it", src.arg)
	}
	target := dst.path
	if lt, err := os.Stat(target); err == nil && lt.IsDir() {
		target = filepath.Join(target, path.Base(path.Clean(src.path)))
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return pathError(dst.arg, err)
	} else if strings.HasSuffix(dst.path, string(filepath.Separator)) {
		return fmt.Errorf("%s: no such directory", dst.arg)
	}
	total, err := c.remoteSize(src.path, st)
	if err != nil {
		return err
	}
	c.bar = newProgressBar(path.Base(src.path), total)
	if !st.IsDir() {
		return c.downloadFile(src.path, target, st.Mode(), src.arg)
	}
	w := c.sc.Walk(src.path)
	for w.Step() {
		if err := w.Err(); err != nil {
			return pathError(w.Path(), err)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(w.Path(), src.path), "/")
		to := filepath.Join(target, filepath.FromSlash(rel))
		info := w.Stat()
		switch {
		case info.IsDir():
			if err := os.Mkdir(to, info.Mode().Perm()|0o700); err != nil {
				if lt, lerr := os.Stat(to); lerr != nil || !lt.IsDir() {
					return pathError(to, err)
				}
			}
		case info.Mode().IsRegular():
			if err := c.downloadFile(w.Path(), to, info.Mode(), w.Path()); err != nil {
				return err
			}
		default:
			fmt.Fprintf(os.Stderr, "devgpu: skipping %s: not a regular file or directory\n", w.Path())
		}
	}
	return nil
}

func (c *copier) downloadFile(remote, local string, mode fs.FileMode, display string) error {
	in, err := c.sc.Open(remote)
	if err != nil {
		return pathError(display, err)
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(local), tempName(filepath.Base(local)))
	if err != nil {
		return pathError(local, err)
	}
	_, err = in.WriteTo(&countingWriter{ctx: c.ctx, w: out, bar: c.bar})
	if err == nil {
		err = out.Chmod(mode.Perm())
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(out.Name(), local)
	}
	if err != nil {
		_ = os.Remove(out.Name())
		if c.ctx.Err() != nil {
			return c.ctx.Err()
		}
		return pathError(display, err)
	}
	return nil
}

// tempName is a hidden name beside the destination, unique per copy. For
// os.CreateTemp, its random part is a "*" pattern.
func tempName(base string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "." + base + ".devgpu-" + hex.EncodeToString(b) + ".part"
}

func localSize(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return pathError(p, err)
		}
		if info, err := os.Stat(p); err == nil && info.Mode().IsRegular() {
			total += info.Size()
		}
		return nil
	})
	return total, err
}

func (c *copier) remoteSize(root string, st fs.FileInfo) (int64, error) {
	if !st.IsDir() {
		return st.Size(), nil
	}
	var total int64
	w := c.sc.Walk(root)
	for w.Step() {
		if err := w.Err(); err != nil {
			return 0, pathError(w.Path(), err)
		}
		if w.Stat().Mode().IsRegular() {
			total += w.Stat().Size()
		}
	}
	return total, nil
}

// pathError says in one sentence what is wrong with a path.
func pathError(name string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: no such file or directory", name)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s: permission denied", name)
	case errors.Is(err, context.Canceled):
		return err
	}
	var se *sftp.StatusError
	if errors.As(err, &se) {
		return fmt.Errorf("%s: %s", name, strings.TrimSpace(se.Error()))
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", name, pe.Err)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// countingReader feeds an upload: it reports progress, stops on ctx, and
// has a Size, which lets pkg/sftp write concurrently.
type countingReader struct {
	ctx  context.Context
	r    io.Reader
	size int64
	bar  *progressBar
}

func (c *countingReader) Size() int64 { return c.size }

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.bar.add(n)
	return n, err
}

type countingWriter struct {
	ctx context.Context
	w   io.Writer
	bar *progressBar
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.w.Write(p)
	c.bar.add(n)
	return n, err
}

// progressBar draws a transfer's progress on stderr, when stderr is a
// terminal and the transfer is large; otherwise it only counts.
type progressBar struct {
	name  string
	total int64
	done  atomic.Int64
	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

func newProgressBar(name string, total int64) *progressBar {
	b := &progressBar{name: name, total: total, start: time.Now(), stop: make(chan struct{})}
	if total < progressMin || !term.IsTerminal(int(os.Stderr.Fd())) {
		return b
	}
	b.wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				b.draw()
				fmt.Fprintln(os.Stderr)
				return
			case <-t.C:
				b.draw()
			}
		}
	})
	return b
}

func (b *progressBar) add(n int) {
	if b != nil {
		b.done.Add(int64(n))
	}
}

func (b *progressBar) draw() {
	done := b.done.Load()
	frac := 1.0
	if b.total > 0 {
		frac = min(float64(done)/float64(b.total), 1)
	}
	const width = 30
	fill := int(frac * width)
	rate := float64(done) / max(time.Since(b.start).Seconds(), 0.001)
	fmt.Fprintf(os.Stderr, "\r\033[K%s %3.0f%% [%s%s] %s / %s %s/s", b.name, frac*100,
		strings.Repeat("=", fill), strings.Repeat(" ", width-fill), humanBytes(float64(done)), humanBytes(float64(b.total)), humanBytes(rate))
}

func (b *progressBar) finish() {
	if b == nil {
		return
	}
	b.once.Do(func() { close(b.stop) })
	b.wg.Wait()
}

func humanBytes(n float64) string {
	units := []string{"B", "KB", "MB", "GB", "TB"}
	i := 0
	for n >= 1000 && i < len(units)-1 {
		n /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", n, units[i])
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}
