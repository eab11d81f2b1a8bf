package imagetest_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/devgpu/devgpu/internal/image"
	"github.com/devgpu/devgpu/internal/image/imagetest"
	"github.com/devgpu/devgpu/internal/testutil"
)

func TestBusyboxImage(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
	defer cancel()
	host := imagetest.Registry(t)
	pinned := imagetest.Push(t, host+"/busybox:latest", imagetest.BusyboxImage(t))

	s, err := image.Open(t.TempDir(), image.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Pull(ctx, pinned, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range imagetest.BusyboxApplets {
		if l, err := os.Readlink(filepath.Join(img.Dir, "bin", a)); err != nil || l != "busybox" {
			t.Errorf("bin/%s -> %q, %v", a, l, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(img.Dir, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("tmp: %v, %v", fi.Mode(), err)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(img.Dir, "bin", "echo"), "hello").Output()
	if err != nil || string(out) != "hello\n" {
		t.Errorf("bin/echo hello: %q, %v", out, err)
	}
}
