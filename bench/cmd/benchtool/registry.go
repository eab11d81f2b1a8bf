package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/devgpu/devgpu/internal/image/imagetest"
)

// runRegistry serves an in-memory registry with the tests' busybox image,
// for benchmarks of the oci runtime, which pulls its images.
func runRegistry(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("registry", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	go srv.Serve(ln)
	defer srv.Close()
	ref, err := name.ParseReference(ln.Addr().String() + "/bench/busybox:1")
	if err != nil {
		return err
	}
	img := imagetest.BusyboxImage(fatalTB{})
	if err := remote.Write(ref, img); err != nil {
		return fmt.Errorf("push the busybox image: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s@%s\n", ref.Context().Name(), digest)
	<-ctx.Done()
	return nil
}

// fatalTB lets the test image builders run in a program: a failure ends it.
type fatalTB struct{}

func (fatalTB) Helper()                      {}
func (fatalTB) Fatal(args ...any)            { fmt.Fprintln(os.Stderr, args...); os.Exit(1) }
func (fatalTB) Fatalf(f string, args ...any) { fmt.Fprintf(os.Stderr, f+"\n", args...); os.Exit(1) }
func (fatalTB) Skipf(f string, args ...any)  { fmt.Fprintf(os.Stderr, f+"\n", args...); os.Exit(1) }
