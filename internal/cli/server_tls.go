//go:build linux

package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// errPlainHTTP is why `devgpu server` will not serve plain HTTP beyond
// this machine: tokens and shells would cross the network in clear text.
func errPlainHTTP(listen string) error {
	return fmt.Errorf("refusing to serve plain HTTP on %s, which is not a loopback address, because API tokens and shells would cross the network unencrypted; "+
		"give a certificate with tls_cert and tls_key in the server config (or --tls-cert and --tls-key), or use --dev for a self-signed one, "+
		"or pass --insecure-http if a TLS proxy in front of the server terminates HTTPS", listen)
}

// loopbackListen reports whether every address listen can bind is a
// loopback one. An empty host, 0.0.0.0 and :: are every interface.
func loopbackListen(ctx context.Context, listen string) (bool, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false, fmt.Errorf("--listen %q is not host:port (%v); give an address such as 127.0.0.1:8470", listen, err)
	}
	if host == "" {
		return false, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback(), nil
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil || len(ips) == 0 {
		return false, fmt.Errorf("--listen host %q does not resolve (%v); give an IP address", host, err)
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return false, nil
		}
	}
	return true, nil
}

// loadTLS reads a certificate chain and its key.
func loadTLS(certFile, keyFile string) (*tls.Config, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("TLS needs both tls_cert and tls_key (or --tls-cert and --tls-key); give the one that is missing")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("cannot load the TLS certificate %s and key %s (%v); give a PEM certificate chain and its PEM private key", certFile, keyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// devCertValidity is how long a --dev certificate lasts; it is made again
// when less than devCertRenew is left, or when it lacks a host.
const (
	devCertValidity = 365 * 24 * time.Hour
	devCertRenew    = 30 * 24 * time.Hour
)

// devCertificate returns the self-signed certificate --dev serves on a
// non-loopback address, made (ECDSA P-256) in dir/tls on first use, for
// hosts; its certificate file is the CA file clients trust.
func devCertificate(dir string, hosts []string, now time.Time) (certFile, keyFile, fingerprint string, err error) {
	tlsDir := filepath.Join(dir, "tls")
	certFile, keyFile = filepath.Join(tlsDir, "dev-cert.pem"), filepath.Join(tlsDir, "dev-key.pem")
	if fp, ok := reusableCert(certFile, keyFile, hosts, now); ok {
		return certFile, keyFile, fp, nil
	}
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		return "", "", "", fmt.Errorf("create %s: %w", tlsDir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return "", "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"devgpu"}, CommonName: "devgpu dev server"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(devCertValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", "", fmt.Errorf("make the dev certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", "", err
	}
	if err := writeFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", "", err
	}
	if err := writeFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", "", err
	}
	return certFile, keyFile, certFingerprint(der), nil
}

// reusableCert reports whether the certificate on disk pairs with its key,
// covers hosts and is not about to expire.
func reusableCert(certFile, keyFile string, hosts []string, now time.Time) (string, bool) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil || len(pair.Certificate) == 0 {
		return "", false
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil || now.Add(devCertRenew).After(cert.NotAfter) {
		return "", false
	}
	for _, h := range hosts {
		if cert.VerifyHostname(h) != nil {
			return "", false
		}
	}
	return certFingerprint(cert.Raw), true
}

// certFingerprint is the SHA-256 of a certificate, as browsers show it.
func certFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// devCertHosts are the names a --dev certificate covers for listen: this
// machine's loopback names and hostname, and the listen address, or every
// interface address when listen is all of them.
func devCertHosts(listen string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if name, err := os.Hostname(); err == nil && name != "" {
		hosts = append(hosts, name)
	}
	host, _, _ := net.SplitHostPort(listen)
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		hosts = append(hosts, host)
	} else if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
				hosts = append(hosts, n.IP.String())
			}
		}
	}
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	_ = os.Remove(tmp) // a leftover keeps its old mode
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// loadConfig takes the front door's settings from the server config file
// and the environment where no flag gave them.
func (f *frontDoorOptions) loadConfig(cmd *cobra.Command, c serverConfig) {
	flags := cmd.Flags()
	if c.TLSCert != "" && !flags.Changed("tls-cert") {
		f.tlsCert = c.TLSCert
	}
	if c.TLSKey != "" && !flags.Changed("tls-key") {
		f.tlsKey = c.TLSKey
	}
	if c.InsecureHTTP && !flags.Changed("insecure-http") {
		f.insecureHTTP = true
	}
	f.metricsToken = c.MetricsToken
	f.maxTunnelsPerUser, f.maxTunnelsPerAddress, f.maxConnsPerAddress = c.MaxTunnelsPerUser, c.MaxTunnelsPerAddress, c.MaxConnsPerAddress
}

// serverTLS decides how the server meets the network: HTTPS with the
// given certificate; with --dev beyond loopback, HTTPS with a self-signed
// one (caFile is then the file clients trust); plain HTTP on loopback or
// with --insecure-http; otherwise a refusal that says why.
func (o *serverOptions) serverTLS(ctx context.Context, dataDir string, log *slog.Logger) (cfg *tls.Config, caFile string, err error) {
	if v := os.Getenv("DEVGPU_METRICS_TOKEN"); v != "" {
		o.front.metricsToken = v
	}
	if o.front.tlsCert != "" || o.front.tlsKey != "" {
		cfg, err := loadTLS(o.front.tlsCert, o.front.tlsKey)
		return cfg, "", err
	}
	loopback, err := loopbackListen(ctx, o.listen)
	if err != nil {
		return nil, "", err
	}
	switch {
	case loopback:
		return nil, "", nil
	case o.front.insecureHTTP:
		log.Warn("serving plain HTTP on a non-loopback address (--insecure-http): terminate TLS in front of this server", "listen", o.listen)
		return nil, "", nil
	case !o.dev:
		return nil, "", errPlainHTTP(o.listen)
	}
	certFile, keyFile, fingerprint, err := devCertificate(dataDir, devCertHosts(o.listen), time.Now())
	if err != nil {
		return nil, "", err
	}
	cfg, err = loadTLS(certFile, keyFile)
	if err != nil {
		return nil, "", err
	}
	log.Info("serving HTTPS with a self-signed certificate; give clients its CA file (devgpu login URL --ca-file FILE)",
		"ca_file", certFile, "sha256_fingerprint", fingerprint)
	return cfg, certFile, nil
}

// serverURL is the URL this machine's CLI reaches the server at.
func serverURL(addr net.Addr, https bool) string {
	host := addr.String()
	if tcp, ok := addr.(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		host = net.JoinHostPort("127.0.0.1", strconv.Itoa(tcp.Port))
	}
	if https {
		return "https://" + host
	}
	return "http://" + host
}
