package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// config is the CLI's saved state: which server, and who we are there.
type config struct {
	// URL is the current server; Token is its credential's bearer token
	// (kept at the top for older CLIs and scripts that read it).
	URL     string `json:"url"`
	Token   string `json:"token"`
	Project string `json:"project,omitempty"`
	// CAFile is the PEM file of the CA that signed the server's
	// certificate, when no system CA did (DEVGPU_CA_FILE overrides it).
	CAFile string `json:"ca_file,omitempty"`
	// Credentials holds the credential of each server logged in to, by
	// URL (credentials.go).
	Credentials map[string]credential `json:"credentials,omitempty"`
	// tokenFromEnv: Token came from DEVGPU_TOKEN, not the file.
	tokenFromEnv bool
}

// configPath is $DEVGPU_CONFIG, or devgpu/config.json under the user's
// configuration directory.
func configPath() (string, error) {
	if p := os.Getenv("DEVGPU_CONFIG"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the configuration directory: %w; set DEVGPU_CONFIG", err)
	}
	return filepath.Join(dir, "devgpu", "config.json"), nil
}

// loadConfig reads the config file (missing is fine) with DEVGPU_URL and
// DEVGPU_TOKEN taking precedence; DEVGPU_URL picks that server's saved
// credential when there is one.
func loadConfig() (config, error) {
	c, _, err := readConfigFile()
	if err != nil {
		return c, err
	}
	fileURL := c.URL
	if v := os.Getenv("DEVGPU_URL"); v != "" {
		c.URL = v
	}
	c.pick(fileURL)
	if v := os.Getenv("DEVGPU_TOKEN"); v != "" {
		c.Token = v
		c.tokenFromEnv = true
	}
	if v := os.Getenv("DEVGPU_CA_FILE"); v != "" {
		c.CAFile = v
	}
	return c, nil
}

// readConfigFile reads the config file as it is, without the
// environment's overrides; missing is fine.
func readConfigFile() (config, string, error) {
	var c config
	path, err := configPath()
	if err != nil {
		return c, "", err
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return c, path, fmt.Errorf("read config: %w", err)
	default:
		if err := json.Unmarshal(b, &c); err != nil {
			return c, path, fmt.Errorf("config %s is not valid JSON (%v); fix it or log in again with `devgpu login`", path, err)
		}
		c.pick(c.URL)
	}
	return c, path, nil
}

// saveConfig writes the config readable by its owner only: it holds
// tokens and refresh secrets. It is written to a new file in the same
// directory (mode 0600 before anything is written, synced) that then
// replaces the config, so that no one ever reads half a config or a copy
// with looser permissions.
func saveConfig(c config) (string, error) {
	path, err := configPath()
	if err != nil {
		return "", err
	}
	dir, err := configDir(path)
	if err != nil {
		return "", err
	}
	c.settle()
	b, _ := json.MarshalIndent(c, "", "  ")
	f, err := os.CreateTemp(dir, ".config-*.tmp")
	if err != nil {
		return "", fmt.Errorf("save config: %w", err)
	}
	tmp := f.Name()
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(append(b, '\n'))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("save config: %w", err)
	}
	return path, nil
}

// configDir creates the config's directory (mode 0700) and refuses one
// that other users may write to: they could replace the config, and the
// credentials in it.
func configDir(path string) (string, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("save config: %w", err)
	}
	if runtime.GOOS == "windows" {
		return dir, nil // no mode bits: the profile's ACLs protect it
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("save config: %w", err)
	}
	if m := fi.Mode(); m.Perm()&0o022 != 0 && m&os.ModeSticky == 0 {
		return "", fmt.Errorf("the config directory %s can be written by other users (mode %04o), who could replace your credentials; run `chmod go-w %s` or set DEVGPU_CONFIG to a file in a private directory", dir, m.Perm(), dir)
	}
	return dir, nil
}

// newClient returns an API client from the config, or says how to get one.
// A single sign-on credential near its expiry is renewed first, and again
// whenever the server refuses it (credentials.go).
func newClient() (*sdk.Client, config, error) {
	c, err := loadConfig()
	if err != nil {
		return nil, c, err
	}
	if c.URL == "" || c.Token == "" {
		return nil, c, errors.New("not logged in; run `devgpu login URL` (with --token TOKEN for an API token), or `devgpu server --dev` on this machine")
	}
	client, err := newSDKClient(c.URL, c.Token, c.CAFile)
	if err != nil {
		return nil, c, err
	}
	if err := c.keepFresh(context.Background(), client, time.Now()); err != nil {
		return nil, c, err
	}
	return client, c, nil
}

// newSDKClient is a client for url that trusts caFile, when given, for the
// server's certificate.
func newSDKClient(url, token, caFile string) (*sdk.Client, error) {
	client, err := sdk.NewClient(url, token)
	if err != nil || caFile == "" {
		return client, err
	}
	return client, client.TrustCAFile(caFile)
}
