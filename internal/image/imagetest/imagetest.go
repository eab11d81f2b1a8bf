// Package imagetest builds OCI images in tests and serves them from an
// in-process registry, so that the image store, the oci runtime and the
// end-to-end tests need no network.
package imagetest

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// BusyboxPath is where busybox-static installs the static busybox binary.
const BusyboxPath = "/usr/bin/busybox"

// BusyboxApplets are the commands BusyboxImage links to busybox in /bin.
var BusyboxApplets = []string{
	"sh", "echo", "cat", "ls", "id", "hostname", "ps", "sleep", "env",
	"printf", "head", "stty", "true", "false", "mkdir", "rm", "touch", "grep",
	"wc", "mount", "ip", "ping", "nc", "wget", "df", "stat", "test", "uname",
}

// Entry is one file of a layer built by Layer.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg when zero
	Body     string
	Linkname string // target of a symlink or hard link
	Mode     int64  // 0644 for files and 0755 for directories when zero
	Uid, Gid int
}

// File is a regular file.
func File(name, body string) Entry { return Entry{Name: name, Body: body} }

// Dir is a directory.
func Dir(name string) Entry { return Entry{Name: name, Type: tar.TypeDir} }

// Symlink is a symbolic link to target.
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Linkname: target}
}

// Hardlink is a hard link to target, a path in the image.
func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Linkname: target}
}

// Whiteout deletes path (a file or a directory) from the layers below.
func Whiteout(path string) Entry {
	dir, base := "", path
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		dir, base = path[:i+1], path[i+1:]
	}
	return File(dir+".wh."+base, "")
}

// Opaque hides everything the layers below put in dir.
func Opaque(dir string) Entry { return File(strings.TrimSuffix(dir, "/")+"/.wh..wh..opq", "") }

// TB is the part of testing.TB the image builders use, so that a
// benchmark program can build the same images.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
}

// Tar writes entries as an uncompressed tar stream.
func Tar(t TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Linkname: e.Linkname, Mode: e.Mode, Uid: e.Uid, Gid: e.Gid, ModTime: mtime, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar %s: %v", e.Name, err)
		}
		if h.Size > 0 {
			if _, err := io.WriteString(tw, e.Body); err != nil {
				t.Fatalf("tar %s: %v", e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer builds a gzip-compressed layer holding entries, in order.
func Layer(t TB, entries ...Entry) v1.Layer {
	t.Helper()
	b := Tar(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image builds a linux image for the host's architecture from layers, the
// first the lowest, with PATH set and /bin/sh as its command.
func Image(t TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		OS:           "linux",
		Architecture: goruntime.GOARCH,
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd: []string{"/bin/sh"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// BusyboxImage builds a small image from the host's static busybox
// (apt-get install busybox-static): /bin/busybox with the BusyboxApplets
// linked to it, /etc/passwd and /etc/group with root and nobody, and empty
// /tmp, /root, /proc, /sys, /dev, /run and /etc/hostname. It skips the test
// where busybox is missing.
func BusyboxImage(t TB) v1.Image {
	t.Helper()
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			t.Skipf("%s missing: apt-get install busybox-static", BusyboxPath)
		}
		t.Fatal(err)
	}
	entries := []Entry{
		Dir("bin"), Dir("etc"), Dir("dev"), Dir("proc"), Dir("sys"), Dir("run"),
		{Name: "root", Type: tar.TypeDir, Mode: 0o700},
		{Name: "tmp", Type: tar.TypeDir, Mode: 0o1777},
		{Name: "bin/busybox", Body: string(bb), Mode: 0o755},
		File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
		File("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
		File("etc/hostname", ""),
	}
	for _, a := range BusyboxApplets {
		entries = append(entries, Symlink("bin/"+a, "busybox"))
	}
	return Image(t, Layer(t, entries...))
}

// RegistryOption changes the registry Registry starts.
type RegistryOption func(*registryOptions)

type registryOptions struct {
	wrap []func(http.Handler) http.Handler
}

// WithMiddleware wraps the registry's handler, to count, delay or refuse
// requests, or to require credentials.
func WithMiddleware(mw func(http.Handler) http.Handler) RegistryOption {
	return func(o *registryOptions) { o.wrap = append(o.wrap, mw) }
}

// Registry starts an in-process, in-memory OCI registry for the test and
// returns its host:port, on 127.0.0.1 and so spoken to over plain HTTP.
func Registry(t testing.TB, opts ...RegistryOption) (host string) {
	t.Helper()
	var o registryOptions
	for _, opt := range opts {
		opt(&o)
	}
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	for _, w := range o.wrap {
		h = w(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// Push pushes img to ref, such as host+"/busybox:latest", and returns the
// reference pinned by digest: "host/busybox@sha256:...".
func Push(t testing.TB, ref string, img v1.Image, opts ...remote.Option) string {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return r.Context().Name() + "@" + d.String()
}
