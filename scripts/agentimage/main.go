// Command agentimage builds the devgpu agent image from the static agent,
// without Docker, and writes it as a `docker save` tarball:
//
//	go run ./scripts/agentimage -agent bin/devgpu-agent -ref devgpu.local/agent:dev -out bin/agent-image.tar
//
// It prints the image's manifest digest on stdout.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/devgpu/devgpu/internal/agentimage"
)

func main() {
	agent := flag.String("agent", "bin/devgpu-agent", "the static agent binary (`make build` makes it)")
	ref := flag.String("ref", agentimage.DefaultRef, "the tag to give the image")
	out := flag.String("out", "bin/agent-image.tar", "where to write the tarball")
	flag.Parse()
	if err := run(*agent, *ref, *out); err != nil {
		fmt.Fprintln(os.Stderr, "agentimage:", err)
		os.Exit(1)
	}
}

func run(agent, ref, out string) error {
	img, err := agentimage.Build(agent)
	if err != nil {
		return err
	}
	if err := img.WriteTarball(out, ref); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Println(digest)
	return nil
}
