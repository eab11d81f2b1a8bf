// Package agentimage builds devgpu's two container images without Docker,
// from scratch, reproducibly (the same binary always gives the same
// digest):
//
//   - the agent image: the static agent at /devgpu-agent. Runtimes that
//     cannot copy the agent into a session from the control plane's disk
//     (the kube runtime) start an init container from it, which puts the
//     agent into a volume shared with the session's container.
//   - the server image: the static devgpu binary at /devgpu, entrypoint
//     `devgpu server`, with a writable /var/lib/devgpu for its data
//     directory, for the Helm chart (deploy/helm/devgpu).
//
// Both carry /etc/passwd and /etc/group naming a non-root user (uid and gid
// NonRootUID, "nonroot") that the image runs as, and a world-writable /tmp.
// Neither carries CA certificates: the server reaches the Kubernetes API
// with the in-cluster CA file the kubelet mounts, and PostgreSQL with the
// sslrootcert its URL names.
package agentimage

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// AgentPath is where the agent image holds the agent, and its entrypoint.
const AgentPath = "/devgpu-agent"

// ServerPath is where the server image holds devgpu; its entrypoint is
// `ServerPath server`.
const ServerPath = "/devgpu"

// ServerDataDir is the server image's writable data directory, owned by
// NonRootUID, for `devgpu server --data`.
const ServerDataDir = "/var/lib/devgpu"

// ServerPort is the port the server image documents (devgpu's default).
const ServerPort = 8470

// NonRootUID is the uid and gid both images run as ("nonroot", as in
// distroless images).
const NonRootUID = 65532

// DefaultRef is the reference the agent image is tagged with for local
// clusters. It is not :latest, so that kubelets use an imported copy
// without pulling.
const DefaultRef = "devgpu.local/agent:dev"

// DefaultServerRef is the server image's tag for local clusters.
const DefaultServerRef = "devgpu.local/server:dev"

// epoch is the modification time of every file and of the image itself, so
// that the same binary always gives the same digest.
var epoch = time.Unix(0, 0).UTC()

// Image is one of the two images.
type Image struct {
	img  v1.Image
	kind string // "agent" or "server", for messages
}

// Build makes the agent image from the static agent binary at agentPath.
func Build(agentPath string) (*Image, error) {
	return build("agent", agentPath, AgentPath, "the static devgpu agent", func(c *v1.Config) {
		c.Entrypoint = []string{AgentPath}
		c.WorkingDir = "/"
	}, nil)
}

// AgentLayer is one layer holding the static agent binary at agentPath as
// AgentPath (mode 0755, epoch's time, root-owned), and nothing else: the
// layer that runtimes whose engine cannot copy the agent into a session
// (the aca runtime) append to any session image (mutate.Append), so that
// the image's own files, /etc/passwd included, stay as its owner made them.
// The same binary always gives the same layer digest.
func AgentLayer(agentPath string) (v1.Layer, error) {
	body, err := os.ReadFile(agentPath)
	if err != nil {
		return nil, fmt.Errorf("read the agent binary: %w", err)
	}
	if err := checkStatic("agent", agentPath); err != nil {
		return nil, err
	}
	l, err := layer([]tarEntry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: AgentPath[1:], Mode: 0o755}, body: body}})
	if err != nil {
		return nil, fmt.Errorf("make the agent layer: %w", err)
	}
	return l, nil
}

// BuildServer makes the server image from the static devgpu binary at
// devgpuPath (CGO_ENABLED=0: the kube runtime and PostgreSQL need no cgo,
// and NVML is only for a GPU host's own runtimes).
func BuildServer(devgpuPath string) (*Image, error) {
	dataDir := tarDir(ServerDataDir[1:], 0o700, NonRootUID)
	return build("server", devgpuPath, ServerPath, "the static devgpu server", func(c *v1.Config) {
		c.Entrypoint = []string{ServerPath, "server"}
		c.Cmd = []string{"--data", ServerDataDir}
		c.WorkingDir = ServerDataDir
		c.Env = append(c.Env, "HOME="+ServerDataDir)
		c.ExposedPorts = map[string]struct{}{strconv.Itoa(ServerPort) + "/tcp": {}}
		c.Volumes = map[string]struct{}{ServerDataDir: {}}
	}, []tarEntry{tarDir("var", 0o755, 0), tarDir("var/lib", 0o755, 0), dataDir})
}

// build makes an image of two layers: the base (users, /tmp and extra
// entries) and the binary at path inImage.
func build(kind, binPath, inImage, comment string, configure func(*v1.Config), extra []tarEntry) (*Image, error) {
	body, err := os.ReadFile(binPath)
	if err != nil {
		return nil, fmt.Errorf("read the %s binary: %w", kind, err)
	}
	if err := checkStatic(kind, binPath); err != nil {
		return nil, err
	}
	base, err := layer(append(baseEntries(), extra...))
	if err != nil {
		return nil, fmt.Errorf("make the %s image's base layer: %w", kind, err)
	}
	bin, err := layer([]tarEntry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: inImage[1:], Mode: 0o755}, body: body}})
	if err != nil {
		return nil, fmt.Errorf("make the %s layer: %w", kind, err)
	}
	img, err := mutate.Append(empty.Image,
		mutate.Addendum{Layer: base, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "devgpu agentimage",
			Comment: "users (nonroot " + strconv.Itoa(NonRootUID) + "), /tmp"}},
		mutate.Addendum{Layer: bin, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "devgpu agentimage", Comment: comment}},
	)
	if err != nil {
		return nil, fmt.Errorf("add the %s image's layers: %w", kind, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read the image config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture = "amd64"
	cfg.OS = "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Cmd = nil
	cfg.Config.User = strconv.Itoa(NonRootUID) + ":" + strconv.Itoa(NonRootUID)
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.Labels = map[string]string{"org.opencontainers.image.title": "devgpu " + kind}
	configure(&cfg.Config)
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set the image config: %w", err)
	}
	return &Image{img: img, kind: kind}, nil
}

// checkStatic refuses a dynamically linked binary: the images have no
// libc, so it could never start.
func checkStatic(kind, path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not a Linux executable (%v); build the %s with `make build`", path, err, kind)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s is built for %s, not amd64; build it with GOARCH=amd64 (`make build`)", path, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked and would not start in the %s image, which has no libc; build it with CGO_ENABLED=0 (`make build`)", path, kind)
		}
	}
	return nil
}

// tarEntry is one file or directory of a layer.
type tarEntry struct {
	hdr  tar.Header
	body []byte
}

func tarDir(name string, mode int64, owner int) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: owner, Gid: owner}}
}

func tarFile(name string, mode int64, body string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, body: []byte(body)}
}

// baseEntries are what both images share: the users a non-root process
// needs to have a name (os/user, and tools that print it) and a /tmp.
func baseEntries() []tarEntry {
	id := strconv.Itoa(NonRootUID)
	return []tarEntry{
		tarDir("etc", 0o755, 0),
		tarFile("etc/passwd", 0o644, "root:x:0:0:root:/root:/sbin/nologin\n"+
			"nonroot:x:"+id+":"+id+":nonroot:/home/nonroot:/sbin/nologin\n"),
		tarFile("etc/group", 0o644, "root:x:0:\nnonroot:x:"+id+":\n"),
		tarDir("home", 0o755, 0),
		tarDir("home/nonroot", 0o700, NonRootUID),
		tarDir("tmp", 0o1777, 0),
	}
}

// layer is a layer holding entries, each with epoch's time and numeric
// owners only.
func layer(entries []tarEntry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := e.hdr
		hdr.Size = int64(len(e.body))
		hdr.ModTime = epoch
		hdr.Format = tar.FormatUSTAR
		if err := tw.WriteHeader(&hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}

// Image returns the image, for pushing it to a registry.
func (i *Image) Image() v1.Image { return i.img }

// Digest is the digest of the image's manifest.
func (i *Image) Digest() (string, error) {
	d, err := i.img.Digest()
	if err != nil {
		return "", fmt.Errorf("compute the %s image digest: %w", i.kind, err)
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
		return "", fmt.Errorf("compute the %s image id: %w", i.kind, err)
	}
	return d.String(), nil
}

// Size is the image's compressed size: its layers, config and manifest,
// as a registry stores it.
func (i *Image) Size() (int64, error) {
	m, err := i.img.Manifest()
	if err != nil {
		return 0, fmt.Errorf("read the %s image manifest: %w", i.kind, err)
	}
	raw, err := i.img.RawManifest()
	if err != nil {
		return 0, fmt.Errorf("read the %s image manifest: %w", i.kind, err)
	}
	total := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		total += l.Size
	}
	return total, nil
}

// WriteTarball writes the image tagged ref to path in `docker save` format,
// which `ctr images import` and `docker load` accept.
func (i *Image) WriteTarball(path, ref string) error {
	example := DefaultRef
	if i.kind == "server" {
		example = DefaultServerRef
	}
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("%s image reference %q is not a tag like %s: %w", i.kind, ref, example, err)
	}
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, i.img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write the %s image to %s: %w", i.kind, path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write the %s image to %s: %w", i.kind, path, err)
	}
	return nil
}
