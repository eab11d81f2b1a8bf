package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // its certificate, PEM
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key))
	ca := &testCA{cert: must(x509.ParseCertificate(der)), key: key, file: filepath.Join(dir, name+".pem")}
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

// issue writes a server certificate for 127.0.0.1 and its key.
func (ca *testCA) issue(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "devgpu test server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key))
	certFile, keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(key)))
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// The server serves HTTPS with the certificate it is given; the CLI refuses
// it until told its CA (a wrong CA does not do), then works, shells (a
// WebSocket over the same TLS) included.
func TestTLSServerAndCAFile(t *testing.T) {
	t.Parallel()
	certs := testutil.ShortTempDir(t)
	ca, wrong := newTestCA(t, certs, "ca"), newTestCA(t, certs, "other-ca")
	certFile, keyFile := ca.issue(t, certs)
	e := newEnv(t, "t4:1", "--tls-cert", certFile, "--tls-key", keyFile)

	var cfg struct{ URL, Token string }
	if err := json.Unmarshal(must(os.ReadFile(filepath.Join(e.dir, "config.json"))), &cfg); err != nil {
		t.Fatal(err)
	}
	url := "https://" + e.addr
	if cfg.URL != url {
		t.Fatalf("--dev wrote the URL %q into the CLI config, want %q", cfg.URL, url)
	}

	r := e.cli("sessions", "list")
	if r.code == 0 || !strings.Contains(r.stderr, "--ca-file") {
		t.Fatalf("the CLI trusted a certificate no CA it knows signed: exit %d\n%s", r.code, r.stderr)
	}
	r = e.cli("login", url, "--token", cfg.Token, "--ca-file", wrong.file)
	if r.code == 0 || !strings.Contains(r.stderr, "do not vouch") {
		t.Fatalf("login with the wrong CA file: exit %d\n%s", r.code, r.stderr)
	}
	r = e.cli("login", url, "--token", cfg.Token, "--ca-file", ca.file)
	if r.code != 0 {
		t.Fatalf("login with the server's CA file: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.cli("sessions", "list"); r.code != 0 {
		t.Fatalf("sessions list after login --ca-file: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.cli("doctor"); !strings.Contains(r.stdout, "TLS verified with CA file "+ca.file) {
		t.Errorf("doctor does not show the TLS status:\n%s", r.stdout)
	}

	tm := e.terminal("shell")
	tm.ready()
	tm.send("exit 7\r")
	if code := tm.wait(); code != 7 {
		t.Fatalf("devgpu shell over TLS exited %d, want 7", code)
	}
}

// Without TLS and without --insecure-http, the server refuses a
// non-loopback address before it listens, and says why and what to do.
func TestServerRefusesPlainHTTPBeyondLoopback(t *testing.T) {
	t.Parallel()
	bin := testutil.Binary(t)
	for _, listen := range []string{"0.0.0.0:0", "[::]:0", "192.0.2.1:0"} {
		dir := testutil.ShortTempDir(t)
		ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitMedium)
		cmd := exec.CommandContext(ctx, bin, "server", "--listen", listen, "--data", filepath.Join(dir, "data"), "--gpus", "t4:1")
		cmd.Env = append(os.Environ(), "DEVGPU_CONFIG="+filepath.Join(dir, "config.json"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		timedOut := ctx.Err() != nil
		cancel()
		var exit *exec.ExitError
		if timedOut || !errors.As(err, &exit) {
			t.Errorf("--listen %s without TLS: the server served (%v)", listen, err)
			continue
		}
		for _, want := range []string{"unencrypted", "tls_cert", "--insecure-http"} {
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("--listen %s: the refusal does not say %q:\n%s", listen, want, stderr.String())
			}
		}
	}
}
