// Package image is devgpu's local image store: it pulls OCI images from
// registries, keeps their layers by digest, and unpacks each image once into
// a read-only root filesystem directory that the oci runtime uses as the
// lower layer of every session's overlay.
//
// On disk, under the store's root:
//
//	blobs/sha256/<hex>          compressed layers, verified against their digest
//	images/sha256/<hex>.json    what is known of an unpacked image; its mtime is the last use
//	rootfs/sha256/<hex>/        the unpacked image, keyed by manifest digest, never written again
//	refs/<hash of ref>.json     the digest a reference resolved to when last pulled
//	locks/, tmp/                lock files, and unpacks and downloads in progress
//
// The rootfs path holds no colon, so it can be given to overlayfs as a
// lowerdir as it is.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ProgressFunc is told how many compressed bytes of an image are present
// (downloaded now, or already in the store) out of the image's total. It is
// called often, from one goroutine at a time, and must return quickly.
type ProgressFunc func(done, total int64)

// Image is an image unpacked in the store.
type Image struct {
	// Ref is the fully qualified reference it was asked for, such as
	// "index.docker.io/library/busybox:latest".
	Ref string `json:"ref"`
	// Digest is the digest of the image manifest (for a multi-platform
	// index, of this platform's manifest): "sha256:...".
	Digest string `json:"digest"`
	// Dir is the unpacked root filesystem. It must not be written to: use
	// it as a read-only lower layer.
	Dir string `json:"dir"`
	// Size is the compressed size of the image's layers, the total that
	// Pull's progress counts to.
	Size int64 `json:"size"`
	// DiskSize is the space Dir takes on disk.
	DiskSize int64 `json:"disk_size"`
	// Config is the image's runtime configuration (Env, Entrypoint, Cmd,
	// User, WorkingDir).
	Config v1.Config `json:"config"`
}

// Options configure a Store. The zero value is usable: anonymous registry
// access plus docker config.json credentials, the host's platform.
type Options struct {
	// Keychain finds registry credentials; nil means Keychain(nil), that is
	// the docker config.json only.
	Keychain authn.Keychain
	// Transport for registry requests; nil means remote.DefaultTransport.
	Transport http.RoundTripper
	// Platform chosen from multi-platform images; zero means linux and the
	// host's architecture.
	Platform v1.Platform
	// Jobs is how many layers download at once; zero means 4.
	Jobs int
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Store is a local image store rooted at a directory. Its methods are safe
// for concurrent use, also by several processes sharing the directory.
type Store struct {
	root string
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	flights map[string]*flight

	// onUnpack, when set by a test, is called each time an image is unpacked.
	onUnpack func(digest string)
}

// Open opens the store rooted at dir, creating it if needed.
func Open(dir string, opts Options) (*Store, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	for _, sub := range []string{"blobs/sha256", "images/sha256", "rootfs/sha256", "refs", "locks", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	// rootfs/ must be traversable by the runtime; the rest is the store's.
	if err := os.Chmod(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	if err := os.Chmod(filepath.Join(dir, "rootfs", "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	if opts.Keychain == nil {
		opts.Keychain = Keychain(nil)
	}
	if opts.Platform.OS == "" {
		opts.Platform = v1.Platform{OS: "linux", Architecture: goruntime.GOARCH}
	}
	if opts.Jobs <= 0 {
		opts.Jobs = 4
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Store{root: dir, opts: opts, log: log.With("component", "image_store"), flights: map[string]*flight{}}, nil
}

// Root is the directory the store lives in.
func (s *Store) Root() string { return s.root }

// Pull resolves ref (a tag, or a digest to pin the image) against its
// registry, downloads the layers the store lacks, verifies them, and unpacks
// the image unless it already is. Concurrent pulls of one image, in this
// process or in others sharing the store, download and unpack it once.
// progress may be nil.
func (s *Store) Pull(ctx context.Context, ref string, progress ProgressFunc) (Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	img, err := s.pull(ctx, r, progress)
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

// Ensure returns the image ref names if it is in the store, without asking
// the registry: by the digest a tag resolved to when it was last pulled, or
// by the digest a pinned reference names. Otherwise it pulls it.
func (s *Store) Ensure(ctx context.Context, ref string, progress ProgressFunc) (Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", ref, err)
	}
	if d, ok := s.readRef(r.Name()); ok {
		if img, err := s.local(r.Name(), d); err == nil {
			return img, nil
		}
	}
	if d, ok := r.(name.Digest); ok {
		if img, err := s.local(r.Name(), d.DigestStr()); err == nil {
			return img, nil
		}
	}
	img, err := s.pull(ctx, r, progress)
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

// Rootfs returns the unpacked root filesystem of ref, pulling the image if
// the store lacks it, and records the use for garbage collection.
func (s *Store) Rootfs(ctx context.Context, ref string) (dir string, err error) {
	img, err := s.Ensure(ctx, ref, nil)
	if err != nil {
		return "", err
	}
	return img.Dir, nil
}

// Images lists the unpacked images in the store. Ref is empty: an image may
// be known by several references.
func (s *Store) Images() ([]Image, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "images", "sha256"))
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Image
	for _, e := range ents {
		hexd, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		m, err := s.readMeta("sha256:" + hexd)
		if err != nil {
			continue
		}
		if _, err := os.Stat(s.rootfsDir(m.Digest)); err != nil {
			continue
		}
		out = append(out, s.imageOf("", m))
	}
	return out, nil
}

// pull resolves r remotely and makes sure its image is unpacked.
func (s *Store) pull(ctx context.Context, r name.Reference, progress ProgressFunc) (Image, error) {
	puller, err := remote.NewPuller(s.remoteOptions()...)
	if err != nil {
		return Image{}, err
	}
	desc, err := puller.Get(ctx, r)
	if err != nil {
		return Image{}, err
	}
	img, err := desc.Image() // picks this platform's image from an index
	if err != nil {
		return Image{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return Image{}, err
	}
	if _, err := s.local(r.Name(), digest.String()); err != nil {
		manifest, err := img.Manifest()
		if err != nil {
			return Image{}, err
		}
		config, err := img.ConfigFile()
		if err != nil {
			return Image{}, fmt.Errorf("image config: %w", err)
		}
		p := plan{repo: r.Context(), digest: digest.String(), puller: puller, config: config.Config}
		for _, l := range manifest.Layers {
			if !isLayer(l.MediaType) {
				return Image{}, fmt.Errorf("layer %s: unsupported media type %q", l.Digest, l.MediaType)
			}
			p.layers = append(p.layers, l)
			p.size += l.Size
		}
		if _, err := s.share(ctx, p.digest, progress, func(ctx context.Context, report ProgressFunc) (Image, error) {
			return s.fetchAndUnpack(ctx, p, report)
		}); err != nil {
			return Image{}, err
		}
	}
	if err := s.writeRef(r.Name(), digest.String()); err != nil {
		return Image{}, err
	}
	return s.local(r.Name(), digest.String())
}

func isLayer(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		return true
	}
	return false
}

// plan is what a pull found out about an image before downloading it.
type plan struct {
	repo   name.Repository
	digest string
	puller *remote.Puller
	layers []v1.Descriptor
	size   int64
	config v1.Config
}

// local returns the unpacked image with the given digest and records its
// use, or an error wrapping fs.ErrNotExist.
func (s *Store) local(ref, digest string) (Image, error) {
	if !validDigest(digest) {
		return Image{}, fmt.Errorf("digest %q: %w", digest, fs.ErrNotExist)
	}
	if _, err := os.Stat(s.rootfsDir(digest)); err != nil {
		return Image{}, err
	}
	m, err := s.readMeta(digest)
	if err != nil {
		return Image{}, err
	}
	now := time.Now()
	if err := os.Chtimes(s.metaPath(digest), now, now); err != nil {
		return Image{}, err
	}
	return s.imageOf(ref, m), nil
}

func (s *Store) imageOf(ref string, m meta) Image {
	return Image{Ref: ref, Digest: m.Digest, Dir: s.rootfsDir(m.Digest), Size: m.Size, DiskSize: m.DiskSize, Config: m.Config}
}

func (s *Store) remoteOptions() []remote.Option {
	opts := []remote.Option{
		remote.WithAuthFromKeychain(s.opts.Keychain),
		remote.WithPlatform(s.opts.Platform),
		remote.WithJobs(s.opts.Jobs),
		remote.WithUserAgent("devgpu"),
	}
	if s.opts.Transport != nil {
		opts = append(opts, remote.WithTransport(s.opts.Transport))
	}
	return opts
}

// meta is what the store records of an unpacked image.
type meta struct {
	Digest   string    `json:"digest"`
	Layers   []string  `json:"layers"`
	Size     int64     `json:"size"`
	DiskSize int64     `json:"disk_size"`
	Config   v1.Config `json:"config"`
}

func (s *Store) readMeta(digest string) (meta, error) {
	var m meta
	b, err := os.ReadFile(s.metaPath(digest))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("image %s metadata: %w", digest, err)
	}
	return m, nil
}

type refRecord struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
}

func (s *Store) refPath(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return filepath.Join(s.root, "refs", hex.EncodeToString(sum[:])+".json")
}

func (s *Store) readRef(ref string) (string, bool) {
	b, err := os.ReadFile(s.refPath(ref))
	if err != nil {
		return "", false
	}
	var r refRecord
	if json.Unmarshal(b, &r) != nil || r.Ref != ref || !validDigest(r.Digest) {
		return "", false
	}
	return r.Digest, true
}

func (s *Store) writeRef(ref, digest string) error {
	if d, ok := s.readRef(ref); ok && d == digest {
		return nil
	}
	b, err := json.Marshal(refRecord{Ref: ref, Digest: digest})
	if err != nil {
		return err
	}
	return s.writeFileAtomic(s.refPath(ref), b)
}

// writeFileAtomic writes a small file through a temporary file and a rename.
func (s *Store) writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Join(s.root, "tmp"), "write-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

func (s *Store) blobPath(digest string) string {
	return filepath.Join(s.root, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
}

func (s *Store) metaPath(digest string) string {
	return filepath.Join(s.root, "images", "sha256", strings.TrimPrefix(digest, "sha256:")+".json")
}

func (s *Store) rootfsDir(digest string) string {
	return filepath.Join(s.root, "rootfs", "sha256", strings.TrimPrefix(digest, "sha256:"))
}

func (s *Store) lockPath(digest string) string {
	return filepath.Join(s.root, "locks", strings.TrimPrefix(digest, "sha256:")+".lock")
}

// validDigest reports whether d is "sha256:" and 64 lower-case hex digits,
// the only form the store uses in paths.
func validDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	for _, c := range h {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// errNotLinux is returned where layers cannot be applied safely.
var errNotLinux = errors.New("unpacking images needs Linux (openat2)")
