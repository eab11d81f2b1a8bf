package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// ErrDigestMismatch is returned when a downloaded blob is not what its
// digest says.
var ErrDigestMismatch = errors.New("digest mismatch")

// fetchAndUnpack downloads the layers of p that the store lacks and unpacks
// the image, holding the image's lock (so that other processes wait) and a
// shared hold on the store (so that GC waits).
func (s *Store) fetchAndUnpack(ctx context.Context, p plan, report ProgressFunc) (Image, error) {
	unlockStore, err := lockFile(ctx, s.storeLockPath(), false)
	if err != nil {
		return Image{}, err
	}
	defer unlockStore()
	unlock, err := lockFile(ctx, s.lockPath(p.digest), true)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	if _, err := os.Stat(s.rootfsDir(p.digest)); err == nil {
		report(p.size, p.size) // another process unpacked it meanwhile
		return Image{}, nil
	}

	var (
		mu   sync.Mutex
		done int64
	)
	add := func(n int64) {
		mu.Lock()
		defer mu.Unlock()
		done += n
		report(done, p.size)
	}
	add(0)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.Jobs)
	for _, l := range p.layers {
		g.Go(func() error { return s.fetchBlob(gctx, p, l, add) })
	}
	if err := g.Wait(); err != nil {
		return Image{}, err
	}
	return Image{}, s.unpack(ctx, p)
}

// fetchBlob downloads one layer into blobs/ unless it is there, verifying
// its size and digest.
func (s *Store) fetchBlob(ctx context.Context, p plan, l v1.Descriptor, add func(int64)) error {
	if l.Digest.Algorithm != "sha256" || !validDigest(l.Digest.String()) {
		return fmt.Errorf("layer %s: unsupported digest", l.Digest)
	}
	path := s.blobPath(l.Digest.String())
	if fi, err := os.Stat(path); err == nil && fi.Size() == l.Size {
		add(l.Size)
		return nil
	}
	layer, err := p.puller.Layer(ctx, p.repo.Digest(l.Digest.String()))
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(filepath.Join(s.root, "tmp"), "blob-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	defer f.Close()
	h := sha256.New()
	w := io.MultiWriter(f, h)
	buf := make([]byte, 256<<10)
	var n int64
	for {
		m, rerr := rc.Read(buf)
		if m > 0 {
			if _, err := w.Write(buf[:m]); err != nil {
				return err
			}
			n += int64(m)
			add(int64(m))
			if n > l.Size {
				break
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("layer %s: %w", l.Digest, rerr)
		}
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); n != l.Size || got != l.Digest.String() {
		return fmt.Errorf("layer %s: got %d bytes with digest %s, want %d bytes: %w", l.Digest, n, got, l.Size, ErrDigestMismatch)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// unpack applies the layers of p in order into a temporary directory and
// renames it into rootfs/, so that an image directory is either complete or
// absent.
func (s *Store) unpack(ctx context.Context, p plan) (err error) {
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "rootfs-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	x, err := newExtractor(tmp)
	if err != nil {
		return err
	}
	defer x.Close()
	m := meta{Digest: p.digest, Size: p.size, Config: p.config}
	for _, l := range p.layers {
		m.Layers = append(m.Layers, l.Digest.String())
		if err := s.applyBlob(ctx, x, l.Digest.String()); err != nil {
			return fmt.Errorf("unpack layer %s: %w", l.Digest, err)
		}
	}
	if err := x.finish(); err != nil {
		return err
	}
	if m.DiskSize, err = diskUsage(tmp); err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := s.writeFileAtomic(s.metaPath(p.digest), b); err != nil {
		return err
	}
	if s.onUnpack != nil {
		s.onUnpack(p.digest)
	}
	if err := os.Rename(tmp, s.rootfsDir(p.digest)); err != nil {
		return err
	}
	s.log.Info("image unpacked", "digest", p.digest, "layers", len(p.layers), "size", p.size, "disk_size", m.DiskSize)
	return nil
}

func (s *Store) applyBlob(ctx context.Context, x *extractor, digest string) error {
	f, err := os.Open(s.blobPath(digest))
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := decompress(f)
	if err != nil {
		return err
	}
	defer r.Close()
	return x.apply(ctx, r)
}

// decompress returns the tar stream of a layer blob, sniffing whether it is
// gzip, zstd or plain tar.
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return gzip.NewReader(br)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// diskUsage is what the tree at dir takes on disk, counting hard-linked
// files once.
func diskUsage(dir string) (int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			total += fi.Size()
			return nil
		}
		if st.Nlink > 1 && !fi.IsDir() {
			k := inode{uint64(st.Dev), uint64(st.Ino)}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		total += int64(st.Blocks) * 512
		return nil
	})
	return total, err
}
