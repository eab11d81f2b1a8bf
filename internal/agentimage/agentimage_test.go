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

func TestImageHoldsOnlyTheAgent(t *testing.T) {
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

	// The archive is in `docker save` format: manifest.json names the tag.
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(readMember(t, out, "manifest.json"), &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != DefaultRef || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest.json = %+v, want one image tagged %s with one layer", manifest, DefaultRef)
	}

	tag, err := name.NewTag(DefaultRef)
	if err != nil {
		t.Fatal(err)
	}
	back, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Config.Entrypoint, " "); got != AgentPath {
		t.Errorf("entrypoint = %q, want %q", got, AgentPath)
	}
	if cfg.Config.User != "0" || cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("config user %q os %q arch %q, want 0 linux amd64", cfg.Config.User, cfg.OS, cfg.Architecture)
	}
	if !cfg.Created.Time.Equal(epoch) {
		t.Errorf("created = %v, want %v", cfg.Created.Time, epoch)
	}
	id, err := img.ID()
	if err != nil {
		t.Fatal(err)
	}
	if manifest[0].Config != strings.TrimPrefix(id, "sha256:") && manifest[0].Config != "sha256:"+strings.TrimPrefix(id, "sha256:") {
		t.Errorf("manifest config %q, want the image id %s", manifest[0].Config, id)
	}

	layers, err := back.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	hdr, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Name != "devgpu-agent" || hdr.Typeflag != tar.TypeReg || hdr.Mode != 0o755 || hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(epoch) {
		t.Errorf("layer entry %q type %c mode %o owner %d:%d mtime %v, want devgpu-agent, a 0755 root-owned file from %v",
			hdr.Name, hdr.Typeflag, hdr.Mode, hdr.Uid, hdr.Gid, hdr.ModTime, epoch)
	}
	got, err := io.ReadAll(tr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, body) {
		t.Errorf("the layer's agent differs from the binary (%d bytes, want %d)", len(got), len(body))
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Errorf("the layer holds more than the agent: %v", err)
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
