// Package kcluster gives tests a real single-node Kubernetes cluster on this
// host: test/k8s/cluster.sh (etcd, kube-apiserver, kube-scheduler,
// kube-controller-manager, kubelet, containerd, a CNI bridge and a device
// plugin with four simulated nvidia.com/gpu), with the devgpu agent image
// imported. The first Get in a test binary starts it; Main stops it.
//
// Only one cluster can run on a host (its ports are fixed), so Get holds an
// exclusive lock on /run/devgpu-k8s.lock from start to teardown: test
// binaries that need the cluster take turns.
package kcluster
