package web

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The web console's sources live in web/; the build writes dist/ with
// SOURCES.sha256, the hash of the sources it was built from. These tests
// recompute that hash in Go, so that `go test ./...` (and `make test`)
// fail when someone changed web/ without rebuilding, on a machine without
// Node too.

const staleMessage = "internal/web/dist is stale against web/: run `npm run build` in web/ and commit the result"

// sourceFiles lists what web/build.mjs hashes (keep the two in step):
// the build's own files and everything under src/, as sorted
// '/'-separated paths relative to dir. Tests (web/test/) and node_modules
// are not sources: changing a test needs no rebuild.
func sourceFiles(dir string) ([]string, error) {
	files := []string{"build.mjs", "index.html", "package.json", "package-lock.json", "tsconfig.json"}
	err := filepath.WalkDir(filepath.Join(dir, "src"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	sort.Strings(files)
	return files, err
}

// sourcesHash is sha256 over "path\0sha256hex(content)\n" for each source
// file in sorted order, in hex: what build.mjs writes to SOURCES.sha256.
func sourcesHash(dir string) (string, error) {
	files, err := sourceFiles(dir)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f)))
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(b)
		fmt.Fprintf(h, "%s\x00%s\n", f, hex.EncodeToString(sum[:]))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// The embedded build is the build of the sources in web/.
func TestDistIsFresh(t *testing.T) {
	t.Parallel()
	recorded, err := dist.ReadFile("dist/SOURCES.sha256")
	if err != nil {
		t.Fatalf("dist/SOURCES.sha256: %v; %s", err, staleMessage)
	}
	got, err := sourcesHash("../../web")
	if err != nil {
		t.Fatalf("hash the console's sources in web/: %v", err)
	}
	if strings.TrimSpace(string(recorded)) != got {
		t.Fatalf("%s (dist was built from sources hashing to %s; web/ hashes to %s now)", staleMessage, strings.TrimSpace(string(recorded)), got)
	}
}

// The hash covers each source's path and content and nothing else: a
// changed or added source changes it, a test or an installed module does
// not.
func TestSourcesHash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(p, content string) {
		t.Helper()
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"build.mjs", "index.html", "package.json", "package-lock.json", "tsconfig.json", "src/main.tsx", "src/pages/home.tsx"} {
		write(f, "content of "+f)
	}
	// By hand: the format build.mjs writes, in sorted order.
	h := sha256.New()
	for _, f := range []string{"build.mjs", "index.html", "package-lock.json", "package.json", "src/main.tsx", "src/pages/home.tsx", "tsconfig.json"} {
		sum := sha256.Sum256([]byte("content of " + f))
		fmt.Fprintf(h, "%s\x00%x\n", f, sum)
	}
	want := hex.EncodeToString(h.Sum(nil))
	hash := func() string {
		t.Helper()
		got, err := sourcesHash(dir)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := hash(); got != want {
		t.Fatalf("sourcesHash = %s, want %s", got, want)
	}
	write("test/console.mjs", "a browser test")
	write("node_modules/preact/index.js", "a module")
	write("README.md", "notes")
	if got := hash(); got != want {
		t.Fatalf("a test, a module or a note outside src/ changed the hash: %s, want %s", got, want)
	}
	write("src/pages/home.tsx", "changed")
	if got := hash(); got == want {
		t.Fatal("a changed source left the hash as it was")
	}
	write("src/pages/home.tsx", "content of src/pages/home.tsx")
	write("src/pages/new.tsx", "")
	if got := hash(); got == want {
		t.Fatal("an added source (even empty) left the hash as it was")
	}
}

// Go and web/build.mjs agree on the hash: where Node and the build's
// modules are installed, `node build.mjs --check` accepts the build this
// package's test accepts.
func TestBuildCheckAgrees(t *testing.T) {
	t.Parallel()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed; TestDistIsFresh checks the build without it")
	}
	if _, err := os.Stat("../../web/node_modules/esbuild"); err != nil {
		t.Skip("web/node_modules is not installed (npm ci in web/); TestDistIsFresh checks the build without it")
	}
	recorded, err := dist.ReadFile("dist/SOURCES.sha256")
	if err != nil {
		t.Fatal(err)
	}
	got, err := sourcesHash("../../web")
	if err != nil {
		t.Fatal(err)
	}
	fresh := strings.TrimSpace(string(recorded)) == got
	cmd := exec.Command(node, "build.mjs", "--check")
	cmd.Dir = "../../web"
	out, err := cmd.CombinedOutput()
	if (err == nil) != fresh {
		t.Fatalf("Go finds the build fresh: %v; `node build.mjs --check` says %v:\n%s\nkeep sourceFiles here and in web/build.mjs in step", fresh, err, out)
	}
}
