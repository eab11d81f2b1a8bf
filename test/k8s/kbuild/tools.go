//go:build tools

// Package tools pins the Kubernetes commands test/k8s/cluster.sh builds, so
// that go.sum holds every hash they need (go mod download alone does not
// record k8s.io/kubernetes itself) and CI never has to run go mod tidy.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy" // cluster.sh proxy-up, for tests of Services
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
