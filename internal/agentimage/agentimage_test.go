package agentimage

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// staticProgram builds a tiny static Go program to stand in for the agent.
func staticProgram(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() { println(\"agent\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "agent")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build a static program: %v\n%s", err, out)
	}
	return bin
}

func TestAgentImage(t *testing.T) {
	agent := staticProgram(t)
	body, err := os.ReadFile(agent)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Build(agent)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "agent.tar")
	if err := img.WriteTarball(out, DefaultRef); err != nil {
		t.Fatal(err)
	}
	cfg, files := readBack(t, img, out, DefaultRef)
	if got := strings.Join(cfg.Config.Entrypoint, " "); got != AgentPath {
		t.Errorf("entrypoint = %q, want %q", got, AgentPath)
	}
	// The kube runtime runs the init container as root whatever the image
	// says (it reads 0400 secrets); the image itself is non-root.
	if cfg.Config.User != "65532:65532" || cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("config user %q os %q arch %q, want 65532:65532 linux amd64", cfg.Config.User, cfg.OS, cfg.Architecture)
	}
	if !cfg.Created.Time.Equal(epoch) {
		t.Errorf("created = %v, want %v", cfg.Created.Time, epoch)
	}
	wantBase(t, files)
	f, ok := files["devgpu-agent"]
	if !ok || f.hdr.Mode != 0o755 || f.hdr.Uid != 0 || !bytes.Equal(f.body, body) {
		t.Errorf("devgpu-agent in the image: present %v, mode %o, owner %d, %d bytes; want the agent's %d bytes, 0755, root", ok, f.hdr.Mode, f.hdr.Uid, len(f.body), len(body))
	}
	if len(files) != len(baseEntries())+1 {
		t.Errorf("the image holds %d entries, want the base's %d and the agent", len(files), len(baseEntries()))
	}
}

func TestServerImage(t *testing.T) {
	bin := staticProgram(t)
	img, err := BuildServer(bin)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "server.tar")
	if err := img.WriteTarball(out, DefaultServerRef); err != nil {
		t.Fatal(err)
	}
	cfg, files := readBack(t, img, out, DefaultServerRef)
	if got := strings.Join(cfg.Config.Entrypoint, " "); got != ServerPath+" server" {
		t.Errorf("entrypoint = %q, want %q", got, ServerPath+" server")
	}
	if got := strings.Join(cfg.Config.Cmd, " "); got != "--data "+ServerDataDir {
		t.Errorf("cmd = %q, want --data %s", got, ServerDataDir)
	}
	if cfg.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532", cfg.Config.User)
	}
	if _, ok := cfg.Config.ExposedPorts["8470/tcp"]; !ok {
		t.Errorf("exposed ports %v, want 8470/tcp", cfg.Config.ExposedPorts)
	}
	wantBase(t, files)
	if f, ok := files["devgpu"]; !ok || f.hdr.Mode != 0o755 {
		t.Errorf("devgpu in the image: present %v mode %o, want 0755", ok, f.hdr.Mode)
	}
	// The server's data directory is the non-root user's, and private.
	if d, ok := files["var/lib/devgpu/"]; !ok || d.hdr.Typeflag != tar.TypeDir || d.hdr.Uid != NonRootUID || d.hdr.Gid != NonRootUID || d.hdr.Mode != 0o700 {
		t.Errorf("var/lib/devgpu in the image: present %v, type %c owner %d:%d mode %o; want a 0700 directory of %d", ok, d.hdr.Typeflag, d.hdr.Uid, d.hdr.Gid, d.hdr.Mode, NonRootUID)
	}
	size, err := img.Size()
	if err != nil || size <= 0 {
		t.Fatalf("Size = %d, %v", size, err)
	}
}

// member is one entry of an image's flattened layers.
type member struct {
	hdr  tar.Header
	body []byte
}

// readBack reads the tarball as `docker load` would and returns the image's
// config and every entry of its layers, checking that manifest.json names
// the tag and the image id.
func readBack(t *testing.T, img *Image, path, ref string) (*v1.ConfigFile, map[string]member) {
	t.Helper()
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(readMember(t, path, "manifest.json"), &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != ref || len(manifest[0].Layers) != 2 {
		t.Fatalf("manifest.json = %+v, want one image tagged %s with two layers", manifest, ref)
	}
	id, err := img.ID()
	if err != nil {
		t.Fatal(err)
	}
	if manifest[0].Config != strings.TrimPrefix(id, "sha256:") && manifest[0].Config != "sha256:"+strings.TrimPrefix(id, "sha256:") {
		t.Errorf("manifest config %q, want the image id %s", manifest[0].Config, id)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	back, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := back.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]member{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if !hdr.ModTime.Equal(epoch) {
				t.Errorf("%s has mtime %v, want %v", hdr.Name, hdr.ModTime, epoch)
			}
			if _, dup := files[hdr.Name]; dup {
				t.Errorf("%s is in two layers", hdr.Name)
			}
			files[hdr.Name] = member{hdr: *hdr, body: b}
		}
		rc.Close()
	}
	return cfg, files
}

// wantBase checks what both images share: a passwd and group naming the
// non-root user, and a sticky world-writable /tmp.
func wantBase(t *testing.T, files map[string]member) {
	t.Helper()
	if p := string(files["etc/passwd"].body); !strings.Contains(p, "nonroot:x:65532:65532:") || !strings.HasPrefix(p, "root:x:0:0:") {
		t.Errorf("etc/passwd = %q, want root and nonroot (65532)", p)
	}
	if g := string(files["etc/group"].body); !strings.Contains(g, "nonroot:x:65532:") {
		t.Errorf("etc/group = %q, want nonroot (65532)", g)
	}
	if d, ok := files["tmp/"]; !ok || d.hdr.Typeflag != tar.TypeDir || d.hdr.Mode != 0o1777 {
		t.Errorf("tmp in the image: present %v mode %o, want a 1777 directory", ok, d.hdr.Mode)
	}
}

func TestImageIsReproducible(t *testing.T) {
	agent := staticProgram(t)
	dir := t.TempDir()
	var digests, files []string
	for i, p := range []string{filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")} {
		img, err := Build(agent)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if err := img.WriteTarball(p, DefaultRef); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
		files = append(files, string(b))
		if i == 0 {
			// Touching the binary must not change the image.
			if err := os.Chtimes(agent, epoch, epoch.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if digests[0] != digests[1] || !strings.HasPrefix(digests[0], "sha256:") {
		t.Errorf("digests %q and %q, want the same sha256 digest", digests[0], digests[1])
	}
	if files[0] != files[1] {
		t.Error("two tarballs of the same agent differ")
	}
}

func TestBuildRefusesADynamicAgent(t *testing.T) {
	dynamic, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(dynamic)
	if err != nil {
		t.Fatal(err)
	}
	interp := false
	for _, p := range f.Progs {
		interp = interp || p.Type == elf.PT_INTERP
	}
	f.Close()
	if !interp {
		t.Skipf("%s is statically linked on this host; no dynamic binary to try", dynamic)
	}
	_, err = Build(dynamic)
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("Build(%s) = %v, want an error saying to build with CGO_ENABLED=0", dynamic, err)
	}
}

func TestWriteTarballRefusesABadReference(t *testing.T) {
	img, err := Build(staticProgram(t))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "agent.tar")
	err = img.WriteTarball(out, "Not A Ref")
	if err == nil || !strings.Contains(err.Error(), DefaultRef) {
		t.Fatalf("WriteTarball with a bad reference = %v, want an error that shows a good one", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed write left %s behind: %v", out, err)
	}
}

// readMember returns one file of a tar archive.
func readMember(t *testing.T, archive, member string) []byte {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err != nil {
			t.Fatalf("%s has no %s: %v", archive, member, err)
		}
		if hdr.Name == member {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}
