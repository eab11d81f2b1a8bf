// Package agentimage builds the small container image that carries the
// static devgpu agent, without Docker: one layer holding the agent at
// /devgpu-agent. Runtimes that cannot copy the agent into a session from the
// control plane's disk (the kube runtime) start an init container from this
// image, which puts the agent into a volume shared with the session's
// container.
package agentimage

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// AgentPath is where the image holds the agent, and its entrypoint.
const AgentPath = "/devgpu-agent"

// DefaultRef is the reference the image is tagged with for local clusters.
// It is not :latest, so that kubelets use an imported copy without pulling.
const DefaultRef = "devgpu.local/agent:dev"

// epoch is the modification time of every file and of the image itself, so
// that the same agent always gives the same digest.
var epoch = time.Unix(0, 0).UTC()

// Image is the agent image.
type Image struct {
	img v1.Image
}

// Build makes the image from the static agent binary at agentPath.
func Build(agentPath string) (*Image, error) {
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		return nil, fmt.Errorf("read the agent binary: %w", err)
	}
	if err := checkStatic(agentPath); err != nil {
		return nil, err
	}
	layerTar, err := singleFileTar(AgentPath[1:], agent)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("make the agent layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "devgpu agentimage", Comment: "the static devgpu agent"},
	})
	if err != nil {
		return nil, fmt.Errorf("add the agent layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read the image config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture = "amd64"
	cfg.OS = "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = []string{AgentPath}
	cfg.Config.Cmd = nil
	cfg.Config.User = "0"
	cfg.Config.WorkingDir = "/"
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set the image config: %w", err)
	}
	return &Image{img: img}, nil
}

// checkStatic refuses a dynamically linked agent: the image has no libc, so
// it could never start.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not a Linux executable (%v); build the agent with `make build`", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s is built for %s, not amd64; build it with GOARCH=amd64 (`make build`)", path, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked and would not start in the agent image, which has no libc; build it with CGO_ENABLED=0 (`make build`)", path)
		}
	}
	return nil
}

// singleFileTar is a layer holding one root-owned executable.
func singleFileTar(name string, body []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Mode:     0o755,
		Size:     int64(len(body)),
		ModTime:  epoch,
		Uname:    "root",
		Gname:    "root",
		Format:   tar.FormatUSTAR,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, fmt.Errorf("write the agent layer: %w", err)
	}
	if _, err := tw.Write(body); err != nil {
		return nil, fmt.Errorf("write the agent layer: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write the agent layer: %w", err)
	}
	return buf.Bytes(), nil
}

// Image returns the image, for pushing it to a registry.
func (i *Image) Image() v1.Image { return i.img }

// Digest is the digest of the image's manifest.
func (i *Image) Digest() (string, error) {
	d, err := i.img.Digest()
	if err != nil {
		return "", fmt.Errorf("compute the agent image digest: %w", err)
	}
	return d.String(), nil
}

// ID is the digest of the image's config: the image id that containerd and
// the kubelet report for it, which stays the same when the image is
// imported from a tarball (unlike the manifest digest, which containerd
// recomputes).
func (i *Image) ID() (string, error) {
	d, err := i.img.ConfigName()
	if err != nil {
		return "", fmt.Errorf("compute the agent image id: %w", err)
	}
	return d.String(), nil
}

// WriteTarball writes the image tagged ref to path in `docker save` format,
// which `ctr images import` and `docker load` accept.
func (i *Image) WriteTarball(path, ref string) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("agent image reference %q is not a tag like %s: %w", ref, DefaultRef, err)
	}
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, i.img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write the agent image to %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write the agent image to %s: %w", path, err)
	}
	return nil
}
