package image

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/image/imagetest"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func newStore(t *testing.T, root string, opts Options) *Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s, err := Open(root, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
	t.Cleanup(cancel)
	return ctx
}

// requests counts what a registry is asked, per blob digest.
type requests struct {
	mu    sync.Mutex
	blobs map[string]int
	all   int
	delay time.Duration
}

func (c *requests) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.all++
		isBlob := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
		if isBlob {
			if c.blobs == nil {
				c.blobs = map[string]int{}
			}
			c.blobs[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]++
		}
		delay := c.delay
		c.mu.Unlock()
		if isBlob && delay > 0 {
			time.Sleep(delay)
		}
		next.ServeHTTP(w, r)
	})
}

func (c *requests) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blobs, c.all = map[string]int{}, 0
}

func (c *requests) blobGets(d v1.Hash) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blobs[d.String()]
}

func (c *requests) totalBlobGets() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.blobs {
		n += v
	}
	return n
}

func digestOf(t *testing.T, img interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func layerDigest(t *testing.T, l v1.Layer) v1.Hash {
	t.Helper()
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustNotExist(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: want it absent, got err=%v", p, err)
	}
}

func TestPullAppliesLayers(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	host := imagetest.Registry(t)
	lower := imagetest.Layer(t,
		imagetest.Dir("etc"),
		imagetest.File("etc/hello", "hello\n"),
		imagetest.File("etc/gone", "x"),
		imagetest.Dir("dir"),
		imagetest.File("dir/a", "a"),
		imagetest.Dir("dir/sub"),
		imagetest.File("dir/sub/b", "b"),
		imagetest.Dir("keep"),
		imagetest.File("keep/x", "x"),
		imagetest.Symlink("etc/link", "hello"),
		imagetest.Symlink("abs", "/etc/hello"),
		imagetest.Hardlink("etc/hard", "etc/hello"),
		imagetest.Entry{Name: "bin/suid", Body: "#!/bin/sh\n", Mode: 0o4755},
		imagetest.Entry{Name: "ro", Type: '5', Mode: 0o555},
		imagetest.File("replaced", "file"),
	)
	upper := imagetest.Layer(t,
		imagetest.Whiteout("etc/gone"),
		imagetest.File("dir/new/deep", "deep"), // before the opaque marker: kept
		imagetest.Opaque("dir"),
		imagetest.File("dir/c", "c"),
		imagetest.Whiteout("keep"),
		imagetest.Dir("replaced"),
		imagetest.File("replaced/inside", "in"),
		imagetest.File("ro/late", "late"),
	)
	img := imagetest.Image(t, lower, upper)
	pinned := imagetest.Push(t, host+"/layers:v1", img)

	s := newStore(t, t.TempDir(), Options{})
	got, err := s.Pull(ctx, host+"/layers:v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := digestOf(t, img).String(); got.Digest != want || !strings.HasSuffix(pinned, want) {
		t.Fatalf("digest %s, want %s", got.Digest, want)
	}
	if got.Ref != host+"/layers:v1" {
		t.Errorf("ref %q", got.Ref)
	}
	if got.Dir != filepath.Join(s.Root(), "rootfs", "sha256", strings.TrimPrefix(got.Digest, "sha256:")) {
		t.Errorf("dir %s", got.Dir)
	}
	if len(got.Config.Cmd) != 1 || got.Config.Cmd[0] != "/bin/sh" {
		t.Errorf("config %+v", got.Config)
	}
	if got.Size <= 0 || got.DiskSize <= 0 {
		t.Errorf("size %d, disk size %d", got.Size, got.DiskSize)
	}
	d := got.Dir
	if s := readFile(t, filepath.Join(d, "etc/hello")); s != "hello\n" {
		t.Errorf("etc/hello = %q", s)
	}
	mustNotExist(t, filepath.Join(d, "etc/gone"))
	mustNotExist(t, filepath.Join(d, "etc/.wh.gone"))
	mustNotExist(t, filepath.Join(d, "dir/a"))
	mustNotExist(t, filepath.Join(d, "dir/sub"))
	mustNotExist(t, filepath.Join(d, "dir/.wh..wh..opq"))
	mustNotExist(t, filepath.Join(d, "keep"))
	if s := readFile(t, filepath.Join(d, "dir/c")); s != "c" {
		t.Errorf("dir/c = %q", s)
	}
	if s := readFile(t, filepath.Join(d, "dir/new/deep")); s != "deep" {
		t.Errorf("dir/new/deep = %q", s)
	}
	if s := readFile(t, filepath.Join(d, "replaced/inside")); s != "in" {
		t.Errorf("replaced/inside = %q", s)
	}
	if s := readFile(t, filepath.Join(d, "ro/late")); s != "late" {
		t.Errorf("ro/late = %q", s)
	}
	if l, err := os.Readlink(filepath.Join(d, "etc/link")); err != nil || l != "hello" {
		t.Errorf("etc/link -> %q, %v", l, err)
	}
	if l, err := os.Readlink(filepath.Join(d, "abs")); err != nil || l != "/etc/hello" {
		t.Errorf("abs -> %q, %v", l, err)
	}
	a, err1 := os.Stat(filepath.Join(d, "etc/hello"))
	b, err2 := os.Stat(filepath.Join(d, "etc/hard"))
	if err1 != nil || err2 != nil || !os.SameFile(a, b) {
		t.Errorf("etc/hard is not a hard link to etc/hello: %v %v", err1, err2)
	}
	if fi, err := os.Stat(filepath.Join(d, "bin/suid")); err != nil || fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/suid mode %v, %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Join(d, "ro")); err != nil || fi.Mode().Perm() != 0o555 {
		t.Errorf("ro mode %v, %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("root mode %v, %v", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), "tmp")); len(ents) != 0 {
		t.Errorf("tmp/ holds %v", ents)
	}
}

func TestPullPinnedByDigest(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var reqs requests
	host := imagetest.Registry(t, imagetest.WithMiddleware(reqs.middleware))
	img1 := imagetest.Image(t, imagetest.Layer(t, imagetest.File("version", "1")))
	img2 := imagetest.Image(t, imagetest.Layer(t, imagetest.File("version", "2")))
	pinned1 := imagetest.Push(t, host+"/app:latest", img1)
	imagetest.Push(t, host+"/app:latest", img2) // the tag moves on

	s := newStore(t, t.TempDir(), Options{})
	got, err := s.Pull(ctx, pinned1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digestOf(t, img1).String() || readFile(t, filepath.Join(got.Dir, "version")) != "1" {
		t.Fatalf("pinned pull got %s", got.Digest)
	}
	latest, err := s.Pull(ctx, host+"/app:latest", nil)
	if err != nil {
		t.Fatal(err)
	}
	if latest.Digest != digestOf(t, img2).String() || readFile(t, filepath.Join(latest.Dir, "version")) != "2" {
		t.Fatalf("tag pull got %s", latest.Digest)
	}

	// Both are local now: Rootfs and Ensure ask the registry nothing.
	reqs.reset()
	dir, err := s.Rootfs(ctx, pinned1)
	if err != nil || dir != got.Dir {
		t.Fatalf("Rootfs(pinned) = %s, %v", dir, err)
	}
	dir, err = s.Rootfs(ctx, host+"/app:latest")
	if err != nil || dir != latest.Dir {
		t.Fatalf("Rootfs(tag) = %s, %v", dir, err)
	}
	if reqs.all != 0 {
		t.Errorf("local lookups made %d registry requests", reqs.all)
	}

	missing := host + "/app@sha256:" + strings.Repeat("ab", 32)
	if _, err := s.Pull(ctx, missing, nil); err == nil {
		t.Errorf("pull of a digest the registry lacks succeeded")
	}
	if _, err := s.Pull(ctx, "not a ref", nil); err == nil {
		t.Errorf("pull of a bad reference succeeded")
	}
}

func TestPullSkipsPresentLayers(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var reqs requests
	host := imagetest.Registry(t, imagetest.WithMiddleware(reqs.middleware))
	base := imagetest.Layer(t, imagetest.File("base", randomString(t, 200<<10)))
	la := imagetest.Layer(t, imagetest.File("a", "a"))
	lb := imagetest.Layer(t, imagetest.File("b", "b"))
	imgA := imagetest.Image(t, base, la)
	imgB := imagetest.Image(t, base, lb)
	imagetest.Push(t, host+"/a:1", imgA)
	imagetest.Push(t, host+"/b:1", imgB)
	reqs.reset()

	s := newStore(t, t.TempDir(), Options{})
	var calls []int64
	var total int64
	a, err := s.Pull(ctx, host+"/a:1", func(done, tot int64) {
		calls = append(calls, done)
		total = tot
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []v1.Layer{base, la} {
		if n := reqs.blobGets(layerDigest(t, l)); n != 1 {
			t.Errorf("layer %s fetched %d times, want 1", layerDigest(t, l), n)
		}
	}
	if total != a.Size || len(calls) < 2 || calls[len(calls)-1] != total {
		t.Errorf("progress ended at %v of %d, image size %d", calls[len(calls)-1:], total, a.Size)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i] < calls[i-1] {
			t.Errorf("progress went back: %v", calls)
			break
		}
	}

	reqs.reset()
	if _, err := s.Pull(ctx, host+"/a:1", nil); err != nil {
		t.Fatal(err)
	}
	if n := reqs.totalBlobGets(); n != 0 {
		t.Errorf("second pull fetched %d blobs, want 0", n)
	}

	reqs.reset()
	if _, err := s.Pull(ctx, host+"/b:1", nil); err != nil {
		t.Fatal(err)
	}
	if n := reqs.blobGets(layerDigest(t, base)); n != 0 {
		t.Errorf("shared base layer fetched again (%d)", n)
	}
	if n := reqs.blobGets(layerDigest(t, lb)); n != 1 {
		t.Errorf("new layer fetched %d times, want 1", n)
	}
}

func TestConcurrentPullsUnpackOnce(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	reqs := requests{delay: 50 * time.Millisecond}
	host := imagetest.Registry(t, imagetest.WithMiddleware(reqs.middleware))
	l1 := imagetest.Layer(t, imagetest.File("one", randomString(t, 100<<10)))
	l2 := imagetest.Layer(t, imagetest.File("two", "2"))
	img := imagetest.Image(t, l1, l2)
	imagetest.Push(t, host+"/c:1", img)
	reqs.reset()

	// Two stores on one directory stand for two processes.
	root := t.TempDir()
	var unpacks atomic.Int32
	stores := []*Store{newStore(t, root, Options{}), newStore(t, root, Options{})}
	for _, s := range stores {
		s.onUnpack = func(string) { unpacks.Add(1) }
	}
	const n = 8
	dirs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var img Image
			img, errs[i] = stores[i%2].Pull(ctx, host+"/c:1", func(int64, int64) {})
			dirs[i] = img.Dir
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("pull %d: %v", i, errs[i])
		}
		if dirs[i] != dirs[0] {
			t.Errorf("pull %d got %s, pull 0 %s", i, dirs[i], dirs[0])
		}
	}
	if got := unpacks.Load(); got != 1 {
		t.Errorf("unpacked %d times, want 1", got)
	}
	for _, l := range []v1.Layer{l1, l2} {
		if got := reqs.blobGets(layerDigest(t, l)); got != 1 {
			t.Errorf("layer fetched %d times, want 1", got)
		}
	}
}

func TestPullCancelled(t *testing.T) {
	t.Parallel()
	reqs := requests{delay: 200 * time.Millisecond}
	host := imagetest.Registry(t, imagetest.WithMiddleware(reqs.middleware))
	imagetest.Push(t, host+"/slow:1", imagetest.Image(t, imagetest.Layer(t, imagetest.File("f", "f"))))
	s := newStore(t, t.TempDir(), Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Pull(ctx, host+"/slow:1", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	// The next pull starts afresh and succeeds.
	if _, err := s.Pull(testContext(t), host+"/slow:1", nil); err != nil {
		t.Fatal(err)
	}
}

// authMiddleware refuses requests without the wanted Authorization header.
func authMiddleware(want, challenge string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != want {
				w.Header().Set("WWW-Authenticate", challenge)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}`, http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestPullWithRegistryToken(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	host := imagetest.Registry(t, imagetest.WithMiddleware(authMiddleware("Bearer s3cret", `Basic realm="registry"`)))
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.File("secret", "s")))
	imagetest.Push(t, host+"/private:1", img, remote.WithAuth(authn.FromConfig(authn.AuthConfig{RegistryToken: "s3cret"})))

	anon := newStore(t, t.TempDir(), Options{Keychain: Keychain(map[string]Credential{"other.example": {Token: "s3cret"}})})
	if _, err := anon.Pull(ctx, host+"/private:1", nil); err == nil {
		t.Fatal("pull without credentials succeeded")
	}
	s := newStore(t, t.TempDir(), Options{Keychain: Keychain(map[string]Credential{host: {Token: "s3cret"}})})
	got, err := s.Pull(ctx, host+"/private:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if readFile(t, filepath.Join(got.Dir, "secret")) != "s" {
		t.Error("wrong content")
	}
}

func TestPullWithBasicAuth(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("robot:pat123"))
	host := imagetest.Registry(t, imagetest.WithMiddleware(authMiddleware(basic, `Basic realm="registry"`)))
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.File("f", "f")))
	imagetest.Push(t, host+"/private:1", img, remote.WithAuth(&authn.Basic{Username: "robot", Password: "pat123"}))

	for name, c := range map[string]Credential{
		"password": {Username: "robot", Password: "pat123"},
		"token":    {Username: "robot", Token: "pat123"},
	} {
		s := newStore(t, t.TempDir(), Options{Keychain: Keychain(map[string]Credential{host: c})})
		if _, err := s.Pull(ctx, host+"/private:1", nil); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Not parallel: it sets the environment.
func TestPullWithDockerConfig(t *testing.T) {
	ctx := testContext(t)
	basic := base64.StdEncoding.EncodeToString([]byte("me:pw"))
	host := imagetest.Registry(t, imagetest.WithMiddleware(authMiddleware("Basic "+basic, `Basic realm="registry"`)))
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.File("f", "f")))
	imagetest.Push(t, host+"/private:1", img, remote.WithAuth(&authn.Basic{Username: "me", Password: "pw"}))

	cfg := t.TempDir()
	conf := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, basic)
	if err := os.WriteFile(filepath.Join(cfg, "config.json"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", t.TempDir())
	t.Setenv("DOCKER_CONFIG", cfg)
	s := newStore(t, t.TempDir(), Options{Keychain: Keychain(nil)})
	if _, err := s.Pull(ctx, host+"/private:1", nil); err != nil {
		t.Fatal(err)
	}
}

func TestMaliciousLayers(t *testing.T) {
	t.Parallel()
	host := imagetest.Registry(t)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	outsideRel := strings.TrimPrefix(outside, "/")

	tests := []struct {
		name    string
		layers  [][]imagetest.Entry
		refused bool   // the pull must fail with ErrUnsafeLayer
		inside  string // where the layer's write must land, in the image
	}{
		{name: "dotdot file", refused: true, layers: [][]imagetest.Entry{{imagetest.File("../../../../../../"+outsideRel+"/pwned", "x")}}},
		{name: "dotdot dir", refused: true, layers: [][]imagetest.Entry{{imagetest.Dir("a/../../pwned")}}},
		{name: "dotdot hard link", refused: true, layers: [][]imagetest.Entry{{imagetest.Hardlink("h", "../../../../../../"+outsideRel+"/victim")}}},
		{name: "dotdot whiteout", refused: true, layers: [][]imagetest.Entry{{imagetest.File("../.wh.victim", "")}}},
		{name: "whiteout of dotdot", refused: true, layers: [][]imagetest.Entry{{imagetest.File(".wh...", "")}}},
		{name: "absolute symlink followed", inside: outsideRel + "/pwned", layers: [][]imagetest.Entry{{
			imagetest.Symlink("evil", outside), imagetest.File("evil/pwned", "x"),
		}}},
		{name: "relative symlink climbing", inside: outsideRel + "/pwned", layers: [][]imagetest.Entry{{
			imagetest.Symlink("up", "../../../../../../../.."), imagetest.File("up/"+outsideRel+"/pwned", "x"),
		}}},
		{name: "symlink in lower layer", inside: outsideRel + "/pwned", layers: [][]imagetest.Entry{
			{imagetest.Symlink("etc", outside)},
			{imagetest.File("etc/pwned", "x")},
		}},
		{name: "whiteout through symlink", layers: [][]imagetest.Entry{
			{imagetest.Symlink("w", outside)},
			{imagetest.Whiteout("w/victim")},
		}},
		{name: "opaque through symlink", layers: [][]imagetest.Entry{
			{imagetest.Symlink("o", outside)},
			{imagetest.Opaque("o")},
		}},
		{name: "file over symlink", inside: "f", layers: [][]imagetest.Entry{
			{imagetest.Symlink("f", victim)},
			{imagetest.File("f", "overwritten")},
		}},
		{name: "hard link to symlink", layers: [][]imagetest.Entry{{
			imagetest.Symlink("s", victim), imagetest.Hardlink("h", "s"), imagetest.File("h", "overwritten"),
		}}},
		{name: "hard link through symlink", layers: [][]imagetest.Entry{{
			imagetest.Symlink("d", outside), imagetest.Hardlink("h", "d/victim"),
		}}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			var layers []v1.Layer
			for _, es := range tt.layers {
				layers = append(layers, imagetest.Layer(t, es...))
			}
			ref := fmt.Sprintf("%s/evil%d:1", host, i)
			imagetest.Push(t, ref, imagetest.Image(t, layers...))
			s := newStore(t, t.TempDir(), Options{})
			img, err := s.Pull(ctx, ref, nil)
			if tt.refused {
				if !errors.Is(err, ErrUnsafeLayer) {
					t.Errorf("pull: %v, want ErrUnsafeLayer", err)
				}
				if ents, _ := os.ReadDir(filepath.Join(s.Root(), "rootfs", "sha256")); len(ents) != 0 {
					t.Errorf("refused image left %v", ents)
				}
				if ents, _ := os.ReadDir(filepath.Join(s.Root(), "tmp")); len(ents) != 0 {
					t.Errorf("refused image left tmp/%v", ents)
				}
			} else if tt.inside != "" {
				if err != nil {
					t.Fatal(err)
				}
				if fi, err := os.Lstat(filepath.Join(img.Dir, tt.inside)); err != nil || !fi.Mode().IsRegular() {
					t.Errorf("%s in the image: %v", tt.inside, err)
				}
			}
			// Whatever happened, outside is untouched.
			ents, err := os.ReadDir(outside)
			if err != nil || len(ents) != 1 || ents[0].Name() != "victim" {
				t.Errorf("outside dir now holds %v (%v)", ents, err)
			}
			if got := readFile(t, victim); got != "precious" {
				t.Errorf("victim now %q", got)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(victim, &st); err != nil || st.Nlink != 1 {
				t.Errorf("victim has %d links (%v)", st.Nlink, err)
			}
		})
	}
}

func TestGC(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	host := imagetest.Registry(t)
	s := newStore(t, t.TempDir(), Options{})
	shared := imagetest.Layer(t, imagetest.File("shared", randomString(t, 32<<10)))
	var imgs []Image
	for i, name := range []string{"old", "busy", "new"} {
		own := imagetest.Layer(t, imagetest.File(name, randomString(t, 64<<10)))
		imagetest.Push(t, host+"/"+name+":1", imagetest.Image(t, shared, own))
		img, err := s.Pull(ctx, host+"/"+name+":1", nil)
		if err != nil {
			t.Fatal(err)
		}
		// Least recently used first: old, then busy, then new.
		at := time.Now().Add(time.Duration(i-10) * time.Minute)
		if err := os.Chtimes(s.metaPath(img.Digest), at, at); err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	old, busy, newest := imgs[0], imgs[1], imgs[2]
	inUse := func(d string) bool { return d == busy.Digest }

	usage, err := s.Usage()
	if err != nil {
		t.Fatal(err)
	}
	// Within budget: nothing goes.
	if freed, err := s.GC(ctx, inUse, usage); err != nil || freed != 0 {
		t.Fatalf("GC within budget freed %d, %v", freed, err)
	}
	// One byte over: the least recently used idle image goes, with its own
	// layer but not the shared one.
	freed, err := s.GC(ctx, inUse, usage-1)
	if err != nil || freed <= 0 {
		t.Fatalf("GC freed %d, %v", freed, err)
	}
	mustNotExist(t, old.Dir)
	for _, img := range []Image{busy, newest} {
		if _, err := os.Stat(img.Dir); err != nil {
			t.Errorf("%s removed: %v", img.Ref, err)
		}
	}
	if _, err := os.Stat(s.blobPath(layerDigest(t, shared).String())); err != nil {
		t.Errorf("shared layer removed: %v", err)
	}
	after, _ := s.Usage()
	if after != usage-freed {
		t.Errorf("usage %d after freeing %d of %d", after, freed, usage)
	}

	// Budget 0: everything not in use goes; the busy image stays unpacked.
	if _, err := s.GC(ctx, inUse, 0); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, newest.Dir)
	if _, err := os.Stat(filepath.Join(busy.Dir, "busy")); err != nil {
		t.Errorf("busy image damaged: %v", err)
	}
	imgsLeft, _ := s.Images()
	if len(imgsLeft) != 1 || imgsLeft[0].Digest != busy.Digest {
		t.Errorf("images left: %+v", imgsLeft)
	}
	if after, _ := s.Usage(); after != busy.DiskSize {
		t.Errorf("usage %d, want only the busy image's %d", after, busy.DiskSize)
	}

	// A removed image comes back on demand.
	dir, err := s.Rootfs(ctx, old.Ref)
	if err != nil || dir != old.Dir {
		t.Fatalf("Rootfs after GC: %s, %v", dir, err)
	}
}

func randomString(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)[:n]
}
