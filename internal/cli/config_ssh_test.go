package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSSHConfigBlock(t *testing.T) {
	t.Parallel()
	got := sshConfigBlock("/opt/dev gpu/devgpu", "alice", []string{"ml", "default"})
	want := `# --- devgpu start ---
# Written by ` + "`devgpu config-ssh`" + `; run it again to update. Edits inside this block are lost.
Host devgpu.default
  ProxyCommand "/opt/dev gpu/devgpu" ssh-proxy %h
  User alice
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
Host devgpu.ml
  ProxyCommand "/opt/dev gpu/devgpu" ssh-proxy %h
  User alice
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
# --- devgpu end ---
`
	if got != want {
		t.Errorf("block:\n%s\nwant:\n%s", got, want)
	}
}

func TestReplaceSSHBlock(t *testing.T) {
	t.Parallel()
	block := sshBlockStart + "\nHost devgpu.a\n" + sshBlockEnd + "\n"
	newer := sshBlockStart + "\nHost devgpu.b\n" + sshBlockEnd + "\n"
	for _, tc := range []struct{ name, in, block, want string }{
		{"empty", "", block, block},
		{"append", "Host x\n  User y", block, "Host x\n  User y\n\n" + block},
		{"replace in place", "Host x\n\n" + block + "Host z\n", newer, "Host x\n\n" + newer + "Host z\n"},
		{"idempotent", "Host x\n\n" + block, block, "Host x\n\n" + block},
		{"no final newline", "a\n" + strings.TrimSuffix(block, "\n"), newer, "a\n" + newer},
	} {
		got, err := replaceSSHBlock([]byte(tc.in), tc.block)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := replaceSSHBlock([]byte(sshBlockStart+"\nHost a\n"), block); err == nil {
		t.Error("a block without its end line was replaced")
	}
}

func TestWriteSSHConfig(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), ".ssh", "config")
	block := sshConfigBlock("/bin/devgpu", "u", []string{"p"})
	for range 2 {
		if err := writeSSHConfig(path, block); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != block {
		t.Fatalf("config = %q, %v", b, err)
	}
	st, _ := os.Stat(path)
	dir, _ := os.Stat(filepath.Dir(path))
	if st.Mode().Perm() != 0o600 || dir.Mode().Perm() != 0o700 {
		t.Errorf("modes %v %v, want 0600 and 0700", st.Mode(), dir.Mode())
	}
	// The rest of the file stays, and so does its mode.
	if err := os.WriteFile(path, []byte("Host mine\n  Port 2\n\n"+block+"# tail\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeSSHConfig(path, sshConfigBlock("/bin/devgpu", "u", []string{"q"})); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if !strings.HasPrefix(string(b), "Host mine\n  Port 2\n\n"+sshBlockStart) || !strings.HasSuffix(string(b), sshBlockEnd+"\n# tail\n") ||
		!strings.Contains(string(b), "Host devgpu.q\n") || strings.Contains(string(b), "devgpu.p") {
		t.Errorf("updated config:\n%s", b)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want the file's own 0644", st.Mode())
	}
}
