package sqlite_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// TestLogSpaceReused appends many times a run's log limit and checks that
// the database file stays near the limit: the space of dropped output is
// used again, not left to grow the file.
func TestLogSpaceReused(t *testing.T) {
	const (
		limit   = 1 << 20
		chunk   = 256 << 10
		written = 64 << 20
		// The kept log, the pages a dropped chunk frees before the next
		// append reuses them, the WAL between checkpoints, and the schema.
		maxFiles = 8 << 20
	)
	ctx := testutil.Context(t, testutil.WaitLong)
	path := filepath.Join(t.TempDir(), "devgpu.db")
	s := open(t, path)
	u, p := store.User{Name: "alice"}, store.Project{Name: "ml"}
	if err := s.CreateUser(ctx, &u); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateProject(ctx, &p); err != nil {
		t.Fatal(err)
	}
	job := store.Session{ID: "s1", ProjectID: p.ID, UserID: u.ID, State: sdk.StateRunning, GPUType: "t4", Region: "local",
		Command: "yes"}
	if err := s.CreateSession(ctx, &job); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("y\n"), chunk/2)
	at := time.Now()
	for off := int64(0); off < written; off += chunk {
		c := store.LogChunk{Offset: off, Stream: sdk.StreamStdout, At: at, Data: data}
		if err := s.AppendLogs(ctx, job.ID, off, off+chunk, []store.LogChunk{c}, limit); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.Session(ctx, job.ID); err != nil || got.LogOffset != written || got.LogBytes != limit {
		t.Fatalf("after %d bytes: LogOffset %d, LogBytes %d, %v; want %d, %d", written, got.LogOffset, got.LogBytes, err, written, limit)
	}
	var size int64
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d bytes", filepath.Base(p), fi.Size())
		size += fi.Size()
	}
	if size > maxFiles {
		t.Errorf("the database's files hold %d bytes after %d bytes of output kept to %d; want at most %d",
			size, written, limit, maxFiles)
	}
}
