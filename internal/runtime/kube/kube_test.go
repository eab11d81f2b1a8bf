//go:build linux && !agentonly

package kube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/kcluster"
)

func TestMain(m *testing.M) { kcluster.Main(m) }

// testCredential is the link credential of every session in these tests
// (runtimetest's specs carry it); the server mints one per session.
var testCredential = strings.Repeat("c1", 32)

// clusterEnv is the real test cluster, a namespace of the test's own with
// deploy/kube/rbac.yaml's roles bound to a ServiceAccount, and a link hub
// served over TLS where the cluster's Pods reach this host.
type clusterEnv struct {
	cluster *kcluster.Cluster
	ns      string
	hub     *link.Hub
	linkURL string
	ca      []byte
	// client acts as the control plane's ServiceAccount, with only the
	// permissions rbac.yaml grants.
	client kubernetes.Interface
}

func newClusterEnv(t *testing.T) *clusterEnv {
	t.Helper()
	c := kcluster.Get(t)
	e := &clusterEnv{cluster: c, ns: c.Namespace(t), hub: link.NewHub(testutil.Logger(t))}
	e.hub.SetVerifier(func(_, cred string) (bool, error) { return cred == testCredential, nil })
	e.linkURL, e.ca = serveLink(t, e.hub, c.NodeIP)
	e.client = rbacClient(t, c, e.ns)
	return e
}

// config is a backend over the env's namespace for installation inst.
func (e *clusterEnv) config(t *testing.T, inst string) Config {
	return Config{
		Backend:      "cluster",
		Installation: inst,
		Namespace:    e.ns,
		Region:       "unlabelled-region",
		GPUTypes:     map[string]string{kcluster.GPUProduct: "t4"},
		AgentImage:   e.cluster.AgentImage,
		DefaultImage: e.cluster.SessionImage,
		LinkURL:      e.linkURL,
		LinkCA:       e.ca,
		Link:         e.hub,
		Logger:       testutil.Logger(t),
		Client:       e.client,
	}
}

func (e *clusterEnv) runtime(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	r, err := New(testutil.Context(t, testutil.WaitLong), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

func installation(t *testing.T) string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("t%x", b)
}

// TestConformance runs the runtime conformance suite against the real
// cluster: the device plugin chooses the devices, the agent links out to
// a hub on this host, and the runtime acts with rbac.yaml's permissions
// only.
func TestConformance(t *testing.T) {
	e := newClusterEnv(t)
	opts := runtimetest.Options{
		GPU:          runtime.GPURequest{Type: "t4", Region: kcluster.Region, Count: 2},
		Capacity:     []runtime.Capacity{{Type: "t4", Region: kcluster.Region, Total: e.cluster.GPUs}},
		Serial:       true,
		Image:        e.cluster.SessionImage,
		StartTimeout: testutil.WaitLong,
	}
	runtimetest.Run(t, opts, func(t *testing.T) runtimetest.Factory {
		cfg := e.config(t, installation(t))
		return func() runtime.Runtime { return e.runtime(t, cfg) }
	})
}

// TestClusterPlacement: every GPU of the node goes to one session, each
// a distinct device; one more session waits with the scheduler's reason
// until its start is given up, and leaves nothing behind.
func TestClusterPlacement(t *testing.T) {
	e := newClusterEnv(t)
	r := e.runtime(t, e.config(t, installation(t)))
	spec := func(name string) runtime.Spec {
		return runtime.Spec{
			SessionID: fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%1e9), Project: "proj", User: "alice",
			GPU:         runtime.GPURequest{Type: "t4", Region: kcluster.Region, Count: 1},
			AgentSecret: strings.Repeat("5e", 32), LinkCredential: testCredential, IdleExit: time.Minute,
		}
	}
	seen := map[string]string{}
	for i := range e.cluster.GPUs {
		s := spec(fmt.Sprintf("place%d", i))
		pl := startSession(t, r, s)
		if len(pl.Devices) != 1 || pl.Node != e.cluster.Node {
			t.Fatalf("session %d placed at %+v, want one device on node %s", i, pl, e.cluster.Node)
		}
		if other, ok := seen[pl.Devices[0]]; ok {
			t.Fatalf("sessions %s and %s were both given device %s", other, s.SessionID, pl.Devices[0])
		}
		seen[pl.Devices[0]] = s.SessionID
		if got := runtimetest.ExecOut(t, r, s, `echo -n $CUDA_VISIBLE_DEVICES`); got != pl.Devices[0] {
			t.Errorf("session %s sees %q, want %q", s.SessionID, got, pl.Devices[0])
		}
	}

	extra := spec("waits")
	steps := make(chan string, 100)
	extra.Progress = func(step string, _, _ int64) { steps <- step }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := r.Start(ctx, extra)
		done <- err
	}()
	want := "waiting for a free t4 in " + kcluster.Region + ": 0/1 nodes are available: 1 Insufficient nvidia.com/gpu"
	deadline := time.After(testutil.WaitLong)
	var said []string
wait:
	for {
		select {
		case s := <-steps:
			said = append(said, s)
			if s == want {
				break wait
			}
		case err := <-done:
			cancel()
			t.Fatalf("the fifth session's start ended (%v) instead of waiting; it said %q", err, said)
		case <-deadline:
			cancel()
			t.Fatalf("the fifth session never said %q; it said %q", want, said)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("a given-up start returned %v, want context.Canceled", err)
	}
	for _, in := range list(t, r) {
		if in.SessionID == extra.SessionID {
			t.Fatal("a session whose start was given up is listed")
		}
	}
	if _, err := e.cluster.Client.CoreV1().Secrets(e.ns).Get(context.Background(), podName(extra.SessionID), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the given-up session's Secret is left: %v", err)
	}
}

// TestClusterLifecycle: a bad image fails at once with the image's error;
// a Pod deleted behind the runtime's back leaves List (and takes its
// Secret with it); another installation neither lists nor stops the
// first's Pods.
func TestClusterLifecycle(t *testing.T) {
	e := newClusterEnv(t)
	r := e.runtime(t, e.config(t, installation(t)))
	other := e.runtime(t, e.config(t, installation(t)))
	ctx := testutil.Context(t, testutil.WaitLong)
	newSpec := func(name string) runtime.Spec {
		return runtime.Spec{
			SessionID: fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%1e9), Project: "proj", User: "alice",
			GPU:         runtime.GPURequest{Type: "t4", Region: kcluster.Region, Count: 1},
			AgentSecret: strings.Repeat("5e", 32), LinkCredential: testCredential, IdleExit: time.Minute,
		}
	}

	bad := newSpec("badimage")
	bad.Image = "k8s.local/does-not-exist:1"
	if _, err := r.Start(ctx, bad); err == nil || !strings.Contains(err.Error(), "image k8s.local/does-not-exist:1 was not found or cannot be pulled") {
		t.Fatalf("Start with a missing image: %v", err)
	}

	a := newSpec("mine")
	startSession(t, r, a)
	if got := ids(list(t, other)); len(got) != 0 {
		t.Fatalf("another installation lists %v", got)
	}
	if _, err := other.Connect(ctx, a.SessionID); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("another installation's Connect to the first's session: %v, want ErrNotFound", err)
	}
	if err := other.Stop(ctx, a.SessionID); err != nil {
		t.Fatal(err)
	}
	if got := runtimetest.ExecOut(t, r, a, "echo -n alive"); got != "alive" {
		t.Fatalf("after another installation's Stop, the session printed %q", got)
	}

	zero := int64(0)
	if err := e.cluster.Client.CoreV1().Pods(e.ns).Delete(ctx, podName(a.SessionID), metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ids(list(t, r)), a.SessionID) {
		t.Fatal("a deleted Pod is still listed")
	}
	// The garbage collector removes the Secret the Pod owned.
	testutil.Eventually(t, testutil.WaitLong, "the deleted Pod's Secret to be collected", func() bool {
		_, err := e.cluster.Client.CoreV1().Secrets(e.ns).Get(ctx, podName(a.SessionID), metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

// startSession starts spec on r and stops it when the test ends.
func startSession(t *testing.T, r runtime.Runtime, spec runtime.Spec) runtime.Placement {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitLong)
	pl, err := r.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start %s: %v", spec.SessionID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
		defer cancel()
		if err := r.Stop(ctx, spec.SessionID); err != nil {
			t.Errorf("Stop %s: %v", spec.SessionID, err)
		}
	})
	return pl
}

func list(t *testing.T, r runtime.Runtime) []runtime.Instance {
	t.Helper()
	l, err := r.List(testutil.Context(t, testutil.WaitMedium))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return l
}

func ids(l []runtime.Instance) []string {
	var out []string
	for _, in := range l {
		out = append(out, in.SessionID)
	}
	return out
}

// serveLink serves hub over TLS on ip (where the cluster's Pods reach this
// host), with a certificate from a CA of the test's own; it returns the
// URL and the CA's PEM.
func serveLink(t *testing.T, hub *link.Hub, ip string) (string, []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "devgpu test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(ip)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("listen where Pods reach this host: %v", err)
	}
	srv := httptest.NewUnstartedServer(hub)
	srv.Listener.Close()
	srv.Listener = ln
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(hub.Close)
	return srv.URL, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// rbacClient applies deploy/kube/rbac.yaml to namespace ns (its cluster
// roles renamed after ns) and returns a client acting as its
// ServiceAccount, so that the tests prove the manifest grants enough.
func rbacClient(t *testing.T, c *kcluster.Cluster, ns string) kubernetes.Interface {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitLong)
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "kube", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	admin := c.Client
	var sa string
	dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		var doc json.RawMessage
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("parse rbac.yaml: %v", err)
		}
		var head metav1.TypeMeta
		if err := json.Unmarshal(doc, &head); err != nil || head.Kind == "" {
			continue
		}
		unmarshal := func(into any) {
			if err := json.Unmarshal(doc, into); err != nil {
				t.Fatalf("parse rbac.yaml's %s: %v", head.Kind, err)
			}
		}
		switch head.Kind {
		case "Namespace": // the test's own namespace stands in for it
		case "ServiceAccount":
			var o corev1.ServiceAccount
			unmarshal(&o)
			o.Namespace, sa = ns, o.Name
			_, err = admin.CoreV1().ServiceAccounts(ns).Create(ctx, &o, metav1.CreateOptions{})
		case "Role":
			var o rbacv1.Role
			unmarshal(&o)
			o.Namespace = ns
			_, err = admin.RbacV1().Roles(ns).Create(ctx, &o, metav1.CreateOptions{})
		case "RoleBinding":
			var o rbacv1.RoleBinding
			unmarshal(&o)
			o.Namespace = ns
			for i := range o.Subjects {
				o.Subjects[i].Namespace = ns
			}
			_, err = admin.RbacV1().RoleBindings(ns).Create(ctx, &o, metav1.CreateOptions{})
		case "ClusterRole":
			var o rbacv1.ClusterRole
			unmarshal(&o)
			o.Name += "-" + ns
			_, err = admin.RbacV1().ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
			t.Cleanup(func() { admin.RbacV1().ClusterRoles().Delete(context.Background(), o.Name, metav1.DeleteOptions{}) })
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			unmarshal(&o)
			o.Name += "-" + ns
			o.RoleRef.Name += "-" + ns
			for i := range o.Subjects {
				o.Subjects[i].Namespace = ns
			}
			_, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
			t.Cleanup(func() {
				admin.RbacV1().ClusterRoleBindings().Delete(context.Background(), o.Name, metav1.DeleteOptions{})
			})
		default:
			t.Fatalf("rbac.yaml holds a %s the test does not know", head.Kind)
		}
		if err != nil {
			t.Fatalf("apply rbac.yaml's %s: %v", head.Kind, err)
		}
	}
	if sa == "" {
		t.Fatal("rbac.yaml holds no ServiceAccount")
	}
	expiry := int64(3600)
	tok, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("make a token for ServiceAccount %s: %v", sa, err)
	}
	cfg := rest.AnonymousClientConfig(c.Config)
	cfg.BearerToken = tok.Status.Token
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The API server's authorizer learns of new bindings through its
	// informers, a moment after they are created: until then the runtime
	// would be refused what rbac.yaml grants (CI saw "nodes is forbidden").
	// Wait until the ServiceAccount holds both the cluster-wide and the
	// namespaced grants.
	testutil.Eventually(t, testutil.WaitLong, "rbac.yaml's grants take effect for ServiceAccount "+sa, func() bool {
		_, nodesErr := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{Limit: 1})
		_, podsErr := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{Limit: 1})
		return nodesErr == nil && podsErr == nil
	})
	return client
}
