//go:build linux

package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/server"
	"github.com/devgpu/devgpu/internal/store"
)

// insecureLocalWarning is logged, and shown by `devgpu doctor`, when the
// local runtime may serve several people.
const insecureLocalWarning = "sessions run on the local runtime, which isolates them from neither this host nor each other, and --insecure-local-runtime lets several users start them; use --runtime oci for a server several people share"

// resolveRuntime picks the runtime when none was named (local with --dev,
// oci otherwise) and refuses the local runtime outside --dev unless the
// admin says, with --insecure-local-runtime, that they know it isolates
// nothing.
func (o *serverOptions) resolveRuntime(log *slog.Logger) error {
	if o.runtime == "" {
		o.runtime = "oci"
		if o.dev {
			o.runtime = "local"
		}
	}
	if o.runtime != "local" {
		return nil
	}
	if o.insecureLocal {
		log.Warn(insecureLocalWarning)
		return nil
	}
	if !o.dev {
		return fmt.Errorf("the local runtime isolates sessions from neither this host nor each other, so it runs only with --dev for one person; use --runtime oci, or pass --insecure-local-runtime to run it anyway")
	}
	return nil
}

// singleUser is whether the server must refuse a second user.
func (o *serverOptions) singleUser() bool { return o.runtime == "local" && !o.insecureLocal }

// checkLocalUsers refuses to start the local runtime, without
// --insecure-local-runtime, over a store that already has several users.
func (o *serverOptions) checkLocalUsers(ctx context.Context, st store.Store) error {
	if !o.singleUser() {
		return nil
	}
	n, err := server.People(ctx, st)
	if err != nil {
		return err
	}
	if n > 1 {
		return fmt.Errorf("this installation has %d users, but the local runtime isolates nothing between them; use --runtime oci, or pass --insecure-local-runtime to accept that risk", n)
	}
	return nil
}

// runtimeWarnings is what a backend's runtime cannot enforce, for whoami.
func (o *serverOptions) runtimeWarnings(rt runtime.Runtime) []string {
	var out []string
	if rt.Name() == "local" && o.insecureLocal {
		out = append(out, insecureLocalWarning)
	}
	if w, ok := rt.(interface{ Warnings() []string }); ok {
		out = append(out, w.Warnings()...)
	}
	return out
}

// localHidden lists what local sessions must not see besides their runtime's
// directory: the data directory (store, admin token, agent key, other
// sessions' workspaces), the CLI config with its token, the server config,
// the SQLite store wherever it is, the TLS key and the registry
// credentials of docker's config.
func (o *serverOptions) localHidden(dataDir string) []string {
	hide := []string{dataDir}
	if p, err := configPath(); err == nil {
		hide = append(hide, secretPlace(p))
	}
	if o.config != "" {
		hide = append(hide, secretPlace(o.config))
	}
	if o.storeURL != "" && !strings.Contains(o.storeURL, "://") {
		hide = append(hide, secretPlace(o.storeURL))
	}
	if o.front.tlsKey != "" {
		hide = append(hide, secretPlace(o.front.tlsKey))
	}
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		hide = append(hide, d)
	} else if home, err := os.UserHomeDir(); err == nil {
		hide = append(hide, filepath.Join(home, ".docker"))
	}
	return hide
}

// secretPlace is what to hide for a secret file: its directory when that
// is devgpu's own (~/.config/devgpu, /var/lib/devgpu), so that the mask
// holds when the file is replaced and covers an SQLite file's journal too;
// elsewhere (/etc, a home directory) the file alone.
func secretPlace(file string) string {
	abs, err := filepath.Abs(file)
	if err != nil {
		return file
	}
	if dir := filepath.Dir(abs); strings.Contains(filepath.Base(dir), "devgpu") {
		return dir
	}
	return abs
}
