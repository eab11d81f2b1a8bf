// Command images builds devgpu's server and agent images from the static
// binaries, without Docker, writes each as a `docker save` tarball (which
// `ctr images import` and `docker load` accept) and writes the release
// notes of the build: each image's name, tag, digest, image id and size.
//
//	go run ./scripts/images -server bin/devgpu-server -agent bin/devgpu-agent -repo devgpu.local -tag dev -out bin
//
// `make images` runs it. The digest is the manifest's, the one a registry
// serves after `crane push` of the tarball; the image id (the config's
// digest) is the one containerd and the kubelet report for an imported
// copy.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/devgpu/devgpu/internal/agentimage"
)

func main() {
	server := flag.String("server", "bin/devgpu-server", "the static devgpu binary for the server image (`make images` builds it with CGO_ENABLED=0)")
	agent := flag.String("agent", "bin/devgpu-agent", "the static agent binary (`make build` makes it)")
	repo := flag.String("repo", "devgpu.local", "the registry and path the images are named under: REPO/server and REPO/agent")
	tag := flag.String("tag", "dev", "the tag both images get")
	out := flag.String("out", "bin", "the directory for server-image.tar, agent-image.tar and RELEASE.md")
	flag.Parse()
	if err := run(*server, *agent, *repo, *tag, *out); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

// built is one image as the release notes list it.
type built struct {
	ref, digest, id, tarball string
	size                     int64
}

func run(server, agent, repo, tag, out string) error {
	var images []built
	for _, b := range []struct {
		name, bin string
		build     func(string) (*agentimage.Image, error)
	}{
		{"server", server, agentimage.BuildServer},
		{"agent", agent, agentimage.Build},
	} {
		img, err := b.build(b.bin)
		if err != nil {
			return err
		}
		ref := strings.TrimSuffix(repo, "/") + "/" + b.name + ":" + tag
		path := filepath.Join(out, b.name+"-image.tar")
		if err := img.WriteTarball(path, ref); err != nil {
			return err
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		id, err := img.ID()
		if err != nil {
			return err
		}
		size, err := img.Size()
		if err != nil {
			return err
		}
		images = append(images, built{ref: ref, digest: digest, id: id, tarball: path, size: size})
		fmt.Printf("%s@%s\n", ref, digest)
	}
	return os.WriteFile(filepath.Join(out, "RELEASE.md"), []byte(notes(images)), 0o644)
}

// notes are the release notes of the build: what an operator pins a
// deployment to.
func notes(images []built) string {
	var b strings.Builder
	b.WriteString("# devgpu images\n\n")
	b.WriteString("Built without Docker from scratch (`make images`); both run as uid 65532. Pin deployments to the digest.\n\n")
	b.WriteString("| image | digest | image id (containerd) | size (compressed) | tarball |\n")
	b.WriteString("| --- | --- | --- | --- | --- |\n")
	for _, i := range images {
		fmt.Fprintf(&b, "| `%s` | `%s` | `%s` | %s | `%s` |\n", i.ref, i.digest, i.id, humanize.IBytes(uint64(i.size)), i.tarball)
	}
	return b.String()
}
