package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
)

// AgentKeySize is the length of the key agent secrets are derived from.
const AgentKeySize = 32

// agentSecret is the secret the session's agent accepts:
// HMAC-SHA256(key, session id) in hex. It is derived, never stored, so the
// store holds nothing that reaches an agent, and a restarted control plane
// (or another replica with the same key) reaches the sessions it has.
func agentSecret(key []byte, sessionID string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sessionID))
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Server) agentSecret(sessionID string) string { return agentSecret(s.cfg.AgentKey, sessionID) }

// linkCredential is what the session's agent presents when it links to the
// control plane (runtime.Spec.LinkCredential): HMAC-SHA256(key,
// "link:"+session id) in hex, derived like the agent secret but never equal
// to it, so that neither opens what the other does.
func linkCredential(key []byte, sessionID string) string {
	return agentSecret(key, "link:"+sessionID)
}

func (s *Server) linkCredential(sessionID string) string {
	return linkCredential(s.cfg.AgentKey, sessionID)
}

var processKey = sync.OnceValue(func() []byte {
	b := make([]byte, AgentKeySize)
	_, _ = rand.Read(b)
	return b
})

// LoadAgentKey reads the key agent secrets are derived from, creating it
// (mode 0600) when the file does not exist. A key that others than its
// owner can read or change is refused: it opens every session's agent.
func LoadAgentKey(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		defer f.Close()
		key := make([]byte, AgentKeySize)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("create agent key %s: %w", path, err)
		}
		if _, err := f.Write(key); err != nil {
			return nil, fmt.Errorf("create agent key %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("create agent key %s: %w", path, err)
		}
		return key, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create agent key %s: %w", path, err)
	}
	// The key is a file the server made, not a link to one.
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("agent key %s is not a regular file; remove it to make a new one, which cuts off sessions started with the old one", path)
	}
	f, err = os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read agent key %s (%w); remove it to make a new one, which cuts off sessions started with the old one", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read agent key %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("agent key %s has mode %s, open to other users; run `chmod 600 %s` (and check who read it)", path, fi.Mode(), path)
	}
	key, err := io.ReadAll(io.LimitReader(f, AgentKeySize+1))
	if err != nil {
		return nil, fmt.Errorf("read agent key %s: %w", path, err)
	}
	if len(key) != AgentKeySize {
		return nil, fmt.Errorf("agent key %s holds %d bytes, not %d; remove it to make a new one, which cuts off sessions started with the old one", path, len(key), AgentKeySize)
	}
	return key, nil
}
