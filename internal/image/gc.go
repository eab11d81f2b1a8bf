package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// GC frees disk space until the store uses at most budget bytes, or as close
// to it as it can without touching an image inUse reports true for (given a
// manifest digest, "sha256:..."). In order, it removes:
//
//   - the leftovers of interrupted pulls and anything it cannot account for;
//   - layer blobs no unpacked image refers to;
//   - unpacked images not in use, least recently used first (Pull, Ensure
//     and Rootfs record each use), with their blobs once no image needs them;
//   - blobs of images in use, whose unpacked directories no longer need them
//     (only a later pull of another image sharing them downloads them again).
//
// It waits for pulls in progress, in any process, and pulls wait for it.
// inUse must report the images of sessions that are starting as well as of
// those running: an image whose directory Rootfs has returned is removed
// unless inUse claims it.
func (s *Store) GC(ctx context.Context, inUse func(digest string) bool, budget int64) (freed int64, err error) {
	unlock, err := lockFile(ctx, s.storeLockPath(), true)
	if err != nil {
		return 0, fmt.Errorf("gc: %w", err)
	}
	defer unlock()
	freed, err = s.gc(ctx, inUse, budget)
	if err != nil {
		return freed, fmt.Errorf("gc: %w", err)
	}
	if freed > 0 {
		s.log.Info("image gc", "freed", freed, "budget", budget)
	}
	return freed, nil
}

type gcImage struct {
	meta
	used time.Time
	disk int64
}

func (s *Store) gc(ctx context.Context, inUse func(string) bool, budget int64) (int64, error) {
	var freed int64
	// Interrupted pulls. Small atomic writes happen outside the store lock,
	// so only old ones are left over.
	tmps, err := os.ReadDir(filepath.Join(s.root, "tmp"))
	if err != nil {
		return 0, err
	}
	for _, e := range tmps {
		p := filepath.Join(s.root, "tmp", e.Name())
		if strings.HasPrefix(e.Name(), "write-") {
			if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		}
		n, _ := diskUsage(p)
		if err := removeTree(p); err != nil {
			return freed, err
		}
		freed += n
	}

	// What is there.
	images := map[string]*gcImage{}
	metas, err := os.ReadDir(filepath.Join(s.root, "images", "sha256"))
	if err != nil {
		return freed, err
	}
	for _, e := range metas {
		h, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !validDigest("sha256:"+h) {
			continue
		}
		d := "sha256:" + h
		m, err := s.readMeta(d)
		fi, ierr := e.Info()
		if _, serr := os.Stat(s.rootfsDir(d)); err != nil || ierr != nil || serr != nil {
			os.Remove(s.metaPath(d)) // an image whose unpack did not finish
			continue
		}
		images[d] = &gcImage{meta: m, used: fi.ModTime(), disk: m.DiskSize}
	}
	dirs, err := os.ReadDir(filepath.Join(s.root, "rootfs", "sha256"))
	if err != nil {
		return freed, err
	}
	for _, e := range dirs {
		d := "sha256:" + e.Name()
		if images[d] != nil || inUse(d) {
			continue
		}
		n, err := s.removeImageDir(d) // no record of it: unusable
		freed += n
		if err != nil {
			return freed, err
		}
	}
	blobs := map[string]int64{}
	blobEnts, err := os.ReadDir(filepath.Join(s.root, "blobs", "sha256"))
	if err != nil {
		return freed, err
	}
	for _, e := range blobEnts {
		if fi, err := e.Info(); err == nil {
			blobs["sha256:"+e.Name()] = fi.Size()
		}
	}
	refs := map[string]int{} // blob -> images needing it
	var total int64
	for _, img := range images {
		total += img.disk
		for _, l := range img.Layers {
			refs[l]++
		}
	}
	for _, n := range blobs {
		total += n
	}
	removeBlob := func(d string) error {
		if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		total -= blobs[d]
		freed += blobs[d]
		delete(blobs, d)
		return nil
	}

	// Blobs no image refers to.
	var orphans []string
	for d := range blobs {
		if refs[d] == 0 {
			orphans = append(orphans, d)
		}
	}
	sort.Strings(orphans)
	for _, d := range orphans {
		if total <= budget {
			return freed, nil
		}
		if err := removeBlob(d); err != nil {
			return freed, err
		}
	}

	// Images not in use, least recently used first.
	var idle, busy []*gcImage
	for _, img := range images {
		if inUse(img.Digest) {
			busy = append(busy, img)
		} else {
			idle = append(idle, img)
		}
	}
	sort.Slice(idle, func(i, j int) bool { return idle[i].used.Before(idle[j].used) })
	removedRefs := map[string]bool{}
	for _, img := range idle {
		if total <= budget {
			break
		}
		if err := ctx.Err(); err != nil {
			return freed, err
		}
		n, err := s.removeImageDir(img.Digest)
		total -= n
		freed += n
		if err != nil {
			return freed, err
		}
		removedRefs[img.Digest] = true
		for _, l := range img.Layers {
			if refs[l]--; refs[l] == 0 {
				if _, ok := blobs[l]; ok {
					if err := removeBlob(l); err != nil {
						return freed, err
					}
				}
			}
		}
	}
	if err := s.removeRefsTo(removedRefs); err != nil {
		return freed, err
	}

	// Blobs of images in use: their directories do not need them.
	sort.Slice(busy, func(i, j int) bool { return busy[i].used.Before(busy[j].used) })
	for _, img := range busy {
		for _, l := range img.Layers {
			if total <= budget {
				return freed, nil
			}
			if _, ok := blobs[l]; ok {
				if err := removeBlob(l); err != nil {
					return freed, err
				}
			}
		}
	}
	return freed, nil
}

// removeImageDir removes an unpacked image and its record, returning the
// bytes freed. The directory is first renamed away so that nobody sees it
// half removed.
func (s *Store) removeImageDir(digest string) (int64, error) {
	var n int64
	if m, err := s.readMeta(digest); err == nil {
		n = m.DiskSize
	}
	dir := s.rootfsDir(digest)
	doomed := filepath.Join(s.root, "tmp", "gc-"+strings.TrimPrefix(digest, "sha256:"))
	if err := os.Rename(dir, doomed); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	if n == 0 {
		n, _ = diskUsage(doomed)
	}
	if err := os.Remove(s.metaPath(digest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	os.Remove(s.lockPath(digest))
	if err := removeTree(doomed); err != nil {
		return 0, err
	}
	return n, nil
}

// removeRefsTo forgets the references that resolved to the given digests.
func (s *Store) removeRefsTo(digests map[string]bool) error {
	if len(digests) == 0 {
		return nil
	}
	ents, err := os.ReadDir(filepath.Join(s.root, "refs"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := filepath.Join(s.root, "refs", e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var r refRecord
		if json.Unmarshal(b, &r) != nil || digests[r.Digest] {
			os.Remove(p)
		}
	}
	return nil
}

// removeTree is os.RemoveAll that also copes with directories an image made
// read-only, for stores run without root.
func removeTree(p string) error {
	if err := os.RemoveAll(p); err == nil || os.Geteuid() == 0 {
		return err
	}
	filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(path, 0o700)
		}
		return nil
	})
	return os.RemoveAll(p)
}

// Usage is the disk space the store's unpacked images and blobs take.
func (s *Store) Usage() (int64, error) {
	var total int64
	imgs, err := s.Images()
	if err != nil {
		return 0, err
	}
	for _, img := range imgs {
		total += img.DiskSize
	}
	ents, err := os.ReadDir(filepath.Join(s.root, "blobs", "sha256"))
	if err != nil {
		return 0, fmt.Errorf("usage: %w", err)
	}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			total += fi.Size()
		}
	}
	return total, nil
}
