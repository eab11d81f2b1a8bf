// Command devgpu is the one binary of devgpu: the control plane (`server`),
// the in-session agent (`agent`) and every user and admin command.
package main

import (
	"os"

	"github.com/devgpu/devgpu/internal/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:]))
}
