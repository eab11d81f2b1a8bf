package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestInstallCopiesTheRunningExecutable(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "agent")
	if err := os.WriteFile(file, []byte("an older agent"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{file, dir} { // over an older file; into a directory
		if err := Install(dest); err != nil {
			t.Fatalf("Install(%s): %v", dest, err)
		}
	}
	for _, path := range []string{file, filepath.Join(dir, "devgpu")} {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the running executable", path)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("%s has mode %v; want 0755", path, fi.Mode().Perm())
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("%s holds %d entries; want the two agents and no temporary file", dir, len(entries))
	}
}

func TestInstallIntoMissingDirectoryFails(t *testing.T) {
	t.Parallel()
	err := Install(filepath.Join(t.TempDir(), "missing", "devgpu"))
	if err == nil {
		t.Fatal("Install into a missing directory succeeded")
	}
}
