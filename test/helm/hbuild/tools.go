//go:build tools

// Package tools pins the helm command test/helm/build.sh builds, so that
// go.sum holds every hash it needs and CI never has to run go mod tidy.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
