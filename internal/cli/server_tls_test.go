//go:build linux

package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

func TestLoopbackListen(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		listen   string
		loopback bool
	}{
		{"127.0.0.1:8470", true},
		{"127.0.0.2:8470", true},
		{"[::1]:8470", true},
		{"localhost:8470", true},
		{":8470", false},
		{"0.0.0.0:8470", false},
		{"[::]:8470", false},
		{"192.0.2.1:8470", false},
	} {
		got, err := loopbackListen(context.Background(), c.listen)
		if err != nil || got != c.loopback {
			t.Errorf("loopbackListen(%q) = %v, %v; want %v", c.listen, got, err, c.loopback)
		}
	}
	if _, err := loopbackListen(context.Background(), "8470"); err == nil {
		t.Error("an address without a port was accepted")
	}
}

// Plain HTTP beyond loopback is refused, before anything listens, with one
// sentence naming the cause and the fixes; --insecure-http allows it, and
// a certificate or --dev turns on TLS.
func TestServerTLSDecision(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	for _, listen := range []string{"0.0.0.0:8470", "[::]:8470", ":8470", "192.0.2.1:8470"} {
		o := serverOptions{listen: listen}
		_, _, err := o.serverTLS(context.Background(), t.TempDir(), log)
		if err == nil {
			t.Fatalf("plain HTTP on %s was allowed", listen)
		}
		msg := err.Error()
		for _, want := range []string{"unencrypted", "tls_cert", "--dev", "--insecure-http"} {
			if !strings.Contains(msg, want) {
				t.Errorf("refusal for %s does not say %q: %s", listen, want, msg)
			}
		}
		if strings.Count(msg, ". ") > 0 || strings.Contains(msg, "\n") {
			t.Errorf("refusal is not one sentence: %s", msg)
		}
		o.front.insecureHTTP = true
		if cfg, _, err := o.serverTLS(context.Background(), t.TempDir(), log); err != nil || cfg != nil {
			t.Errorf("--insecure-http on %s: %v, TLS %v; want plain HTTP", listen, err, cfg != nil)
		}
	}
	o := serverOptions{listen: "127.0.0.1:8470"}
	if cfg, _, err := o.serverTLS(context.Background(), t.TempDir(), log); err != nil || cfg != nil {
		t.Errorf("loopback: %v, TLS %v; want plain HTTP", err, cfg != nil)
	}

	dir := t.TempDir()
	o = serverOptions{listen: "0.0.0.0:8470", dev: true}
	cfg, caFile, err := o.serverTLS(context.Background(), dir, log)
	if err != nil || cfg == nil || caFile == "" {
		t.Fatalf("--dev on 0.0.0.0: %v, TLS %v, CA file %q; want a self-signed certificate", err, cfg != nil, caFile)
	}
	o = serverOptions{listen: "0.0.0.0:8470", front: frontDoorOptions{tlsCert: caFile}}
	if _, _, err := o.serverTLS(context.Background(), dir, log); err == nil || !strings.Contains(err.Error(), "tls_key") {
		t.Errorf("a certificate without its key: %v", err)
	}
	o.front.tlsKey = filepath.Join(dir, "tls", "dev-key.pem")
	if cfg, ca, err := o.serverTLS(context.Background(), dir, log); err != nil || cfg == nil || ca != "" {
		t.Errorf("tls_cert and tls_key: %v, TLS %v, CA file %q", err, cfg != nil, ca)
	}
}

// The --dev certificate is ECDSA, verifies for this machine's names with
// itself as the CA, keeps its key private, and is reused until it lacks a
// host or nears its end.
func TestDevCertificate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Now()
	hosts := devCertHosts("0.0.0.0:8470")
	certFile, keyFile, fp, err := devCertificate(dir, hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v %v; want 0600", fi.Mode(), err)
	}
	pemBytes, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if cert.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key algorithm %v, want ECDSA", cert.PublicKeyAlgorithm)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	for _, h := range []string{"localhost", "127.0.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: h, Roots: roots, CurrentTime: now}); err != nil {
			t.Errorf("verify for %s: %v", h, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "devgpu.example.com", Roots: roots, CurrentTime: now}); err == nil {
		t.Error("the certificate verifies for a name it was not made for")
	}
	if _, _, fp2, _ := devCertificate(dir, hosts, now); fp2 != fp {
		t.Error("an existing, valid certificate was not reused")
	}
	if _, _, fp2, _ := devCertificate(dir, append(hosts, "gpu.internal"), now); fp2 == fp {
		t.Error("a certificate lacking a host was reused")
	}
	_, _, fp3, _ := devCertificate(dir, hosts, now)
	if _, _, fp4, _ := devCertificate(dir, hosts, now.Add(devCertValidity)); fp4 == fp3 {
		t.Error("an expiring certificate was reused")
	}
}

// doctor passes HTTPS and loopback HTTP, and fails plain HTTP that
// crosses a network.
func TestTransportSecurity(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		url string
		ok  bool
	}{
		{"https://gpu.example.com", true},
		{"http://127.0.0.1:8470", true},
		{"http://localhost:8470", true},
		{"http://[::1]:8470", true},
		{"http://gpu.example.com:8470", false},
		{"http://10.0.0.5:8470", false},
	} {
		client, err := sdk.NewClient(c.url, "t")
		if err != nil {
			t.Fatal(err)
		}
		if detail, ok := transportSecurity(client); ok != c.ok {
			t.Errorf("%s: %q, ok %v; want ok %v", c.url, detail, ok, c.ok)
		}
	}
}
