//go:build linux

package cli

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/server"
)

func TestAgentKeyFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	want := bytes.Repeat([]byte{7}, server.AgentKeySize)
	t.Setenv(agentKeyEnv, base64.StdEncoding.EncodeToString(want)+"\n")
	got, err := loadAgentKey(dir)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("loadAgentKey with $%s = %x, %v; want %x", agentKeyEnv, got, err, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "agent.key")); !os.IsNotExist(err) {
		t.Errorf("a key from the environment still made agent.key: %v", err)
	}

	for _, bad := range []string{"not base64!", base64.StdEncoding.EncodeToString(want[:16])} {
		t.Setenv(agentKeyEnv, bad)
		if _, err := loadAgentKey(dir); err == nil || !strings.Contains(err.Error(), "head -c32 /dev/urandom | base64") {
			t.Errorf("loadAgentKey with $%s=%q = %v, want an error that says how to make a key", agentKeyEnv, bad, err)
		}
	}
}

func TestAgentKeyFileWithoutEnvironment(t *testing.T) {
	t.Setenv(agentKeyEnv, "") // restored after the test
	os.Unsetenv(agentKeyEnv)
	dir := t.TempDir()
	first, err := loadAgentKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := loadAgentKey(dir)
	if err != nil || !bytes.Equal(first, again) || len(first) != server.AgentKeySize {
		t.Fatalf("the data directory's key changed between starts or has the wrong size: %x then %x (%v)", first, again, err)
	}
}
