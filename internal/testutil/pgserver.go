package testutil

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
)

// PGServer is a private PostgreSQL cluster a test owns: its own data
// directory, a free loopback port, trust authentication for user
// postgres, and a unix socket directory of its own. Unlike the shared
// server at 127.0.0.1:5432, a test may stop and restart it.
type PGServer struct {
	Port int
	dir  string // holds data/, the socket and the log
	bin  string // the server binaries: initdb, pg_ctl, postgres
	// runAs is the OS user the server runs as: initdb and postgres refuse
	// root, so a test running as root hands the cluster to user postgres.
	runAs *user.User
}

// PostgresBinDir finds the PostgreSQL server binaries (initdb, pg_ctl)
// of the newest version installed under /usr/lib/postgresql, or "".
func PostgresBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d
		}
	}
	return ""
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// StartPostgres initialises and starts a private PostgreSQL cluster,
// stopped when the test ends. It skips the test, saying why, only where
// the PostgreSQL server binaries are not installed (outside CI).
func StartPostgres(t testing.TB) *PGServer {
	t.Helper()
	bin := PostgresBinDir()
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; CI must install postgresql")
		}
		t.Skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (install Debian's postgresql to run this test)")
	}
	p := &PGServer{bin: bin, dir: ShortTempDir(t)}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, the private PostgreSQL needs the OS user postgres to run as (initdb refuses root): %v", err)
		}
		p.runAs = u
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(p.dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := p.command("initdb", "-D", p.dataDir(), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.Port = freePort(t)
	t.Cleanup(func() {
		if out, err := p.command("pg_ctl", "stop", "-D", p.dataDir(), "-m", "immediate", "-w").CombinedOutput(); err != nil && p.running() {
			t.Errorf("stop the private PostgreSQL: %v\n%s", err, out)
		}
	})
	p.Start(t)
	return p
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (p *PGServer) dataDir() string { return filepath.Join(p.dir, "data") }

// Addr is where the server listens, 127.0.0.1:PORT.
func (p *PGServer) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.Port) }

// URL is the database db reached at addr (p.Addr(), or a proxy in front
// of it), as user postgres without a password.
func (p *PGServer) URL(addr, db string) string {
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", addr, db)
}

// command runs a PostgreSQL binary as the cluster's OS user.
func (p *PGServer) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(p.bin, name)
	var cmd *exec.Cmd
	if p.runAs != nil {
		cmd = exec.Command("runuser", append([]string{"-u", p.runAs.Username, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = p.dir
	return cmd
}

// options are the server's settings: loopback only, its own socket
// directory, and no fsync (a test's data need not survive a power cut).
func (p *PGServer) options() string {
	return fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200", p.Port, p.dir)
}

// Start starts the server and waits until it accepts connections.
func (p *PGServer) Start(t testing.TB) {
	t.Helper()
	if out, err := p.command("pg_ctl", "start", "-D", p.dataDir(), "-w", "-t", strconv.Itoa(int(WaitMedium.Seconds())),
		"-l", filepath.Join(p.dir, "postgres.log"), "-o", p.options()).CombinedOutput(); err != nil {
		t.Fatalf("start the private PostgreSQL: %v\n%s\n%s", err, out, p.Log())
	}
}

// Stop shuts the server down as `pg_ctl stop -m fast` does: open
// connections are ended at once, and it waits until the server is gone.
func (p *PGServer) Stop(t testing.TB) {
	t.Helper()
	if out, err := p.command("pg_ctl", "stop", "-D", p.dataDir(), "-m", "fast", "-w").CombinedOutput(); err != nil {
		t.Fatalf("stop the private PostgreSQL: %v\n%s", err, out)
	}
}

// Restart is `pg_ctl restart -m fast`: every connection is cut, and the
// server accepts new ones once it returns.
func (p *PGServer) Restart(t testing.TB) {
	t.Helper()
	if out, err := p.command("pg_ctl", "restart", "-D", p.dataDir(), "-m", "fast", "-w", "-t", strconv.Itoa(int(WaitMedium.Seconds())),
		"-l", filepath.Join(p.dir, "postgres.log"), "-o", p.options()).CombinedOutput(); err != nil {
		t.Fatalf("restart the private PostgreSQL: %v\n%s\n%s", err, out, p.Log())
	}
}

func (p *PGServer) running() bool {
	return p.command("pg_ctl", "status", "-D", p.dataDir()).Run() == nil
}

// Log is the server's log so far, for a failing test to show.
func (p *PGServer) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
	return string(b)
}

// Ping reports whether the server accepts a connection now.
func (p *PGServer) Ping(ctx context.Context) bool {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.Addr())
	if err != nil {
		return false
	}
	c.Close()
	return true
}
