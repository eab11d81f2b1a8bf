//go:build linux

package cli

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/devgpu/devgpu/internal/server"
)

// agentKeyEnv holds the agent key, base64, for servers that cannot keep
// it in a file of their own: replicas in Pods (deploy/helm/devgpu), whose
// data directory is per Pod while the key must be the same in all of them,
// and whose Secret files the kubelet makes group-readable, which
// LoadAgentKey refuses.
const agentKeyEnv = "DEVGPU_AGENT_KEY"

// loadAgentKey is the key from $DEVGPU_AGENT_KEY when set, else the data
// directory's agent.key (made on first start).
func loadAgentKey(dataDir string) ([]byte, error) {
	v, ok := os.LookupEnv(agentKeyEnv)
	if !ok {
		return server.LoadAgentKey(filepath.Join(dataDir, "agent.key"))
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
	if err != nil || len(key) != server.AgentKeySize {
		return nil, fmt.Errorf("$%s is not %d bytes in base64; set it to the output of `head -c%d /dev/urandom | base64`, the same on every replica", agentKeyEnv, server.AgentKeySize, server.AgentKeySize)
	}
	return key, nil
}
