package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http/httptest"
	"slices"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/devgpu/devgpu/internal/link"
)

func TestVisibleDevices(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name         string
		nvidia, cuda string
		want         []string
	}{
		{"nothing", "", "", nil},
		{"nvidia ids", "GPU-sim-3,GPU-sim-1", "", []string{"GPU-sim-3", "GPU-sim-1"}},
		{"nvidia wins over cuda", "GPU-a", "0", []string{"GPU-a"}},
		{"nvidia all falls to cuda", "all", "0,1", []string{"0", "1"}},
		{"nvidia none", "none", "", nil},
		{"nvidia void falls to cuda", "void", "GPU-b", []string{"GPU-b"}},
		{"blanks dropped", " GPU-a , ,GPU-b ", "", []string{"GPU-a", "GPU-b"}},
		{"cuda empty", "", " ", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"NVIDIA_VISIBLE_DEVICES": tt.nvidia, "CUDA_VISIBLE_DEVICES": tt.cuda}
			got := visibleDevices(func(k string) string { return env[k] })
			if !slices.Equal(got, tt.want) {
				t.Errorf("visibleDevices = %q; want %q", got, tt.want)
			}
		})
	}
}

func TestWithDevices(t *testing.T) {
	t.Parallel()
	base := []string{"PATH=/bin"}
	if got := withDevices(base, nil); !slices.Equal(got, base) {
		t.Errorf("no devices: %q; want %q", got, base)
	}
	if got := withDevices(base, []string{"GPU-a", "GPU-b"}); !slices.Equal(got, []string{"PATH=/bin", "CUDA_VISIBLE_DEVICES=GPU-a,GPU-b"}) {
		t.Errorf("devices: %q", got)
	}
	set := []string{"CUDA_VISIBLE_DEVICES=1", "PATH=/bin"}
	if got := withDevices(set, []string{"GPU-a"}); !slices.Equal(got, set) {
		t.Errorf("CUDA_VISIBLE_DEVICES already set: %q; want it kept", got)
	}
	// A device plugin's indices are renumbered inside the container: CUDA
	// must not be pointed at them.
	if got := withDevices(base, []string{"3", "5"}); !slices.Equal(got, base) {
		t.Errorf("indices: %q; want CUDA_VISIBLE_DEVICES left unset", got)
	}
	if got := withDevices(base, []string{"MIG-1f2e"}); !slices.Equal(got, []string{"PATH=/bin", "CUDA_VISIBLE_DEVICES=MIG-1f2e"}) {
		t.Errorf("a MIG device: %q", got)
	}
}

// TestServeOverLink serves the agent on a link, as in a Pod: the control
// plane's stream runs a command that sees the devices the engine gave, and
// Serve stops when the control plane stops the session.
func TestServeOverLink(t *testing.T) {
	t.Parallel()
	hub := link.NewHub(nil)
	hub.SetVerifier(func(id, cred string) (bool, error) { return id == "s1" && cred == "cred", nil })
	srv := httptest.NewTLSServer(hub)
	t.Cleanup(srv.Close)
	t.Cleanup(hub.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ln := link.Listen(ctx, link.AgentConfig{
		URL: srv.URL, SessionID: "s1", Credential: "cred",
		TLS:    &tls.Config{RootCAs: roots},
		Report: link.Report{Node: "n1", Devices: []string{"GPU-sim-2"}},
	})
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, ln, Config{Secret: testSecret, Shell: "sh", Env: []string{"PATH=/usr/bin:/bin"}, Devices: []string{"GPU-sim-2"}})
	}()

	report, err := hub.WaitLinked(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if report.Node != "n1" || !slices.Equal(report.Devices, []string{"GPU-sim-2"}) {
		t.Errorf("report %+v; want node n1 with GPU-sim-2", report)
	}
	conn, err := hub.Dial(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if err := WritePreamble(conn, testSecret); err != nil {
		t.Fatal(err)
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, "agent", &ssh.ClientConfig{User: "dev", HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: testTimeout})
	if err != nil {
		t.Fatal(err)
	}
	cl := ssh.NewClient(sc, chans, reqs)
	defer cl.Close()
	s, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Output(`printf %s "$CUDA_VISIBLE_DEVICES"`)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, []byte("GPU-sim-2")) {
		t.Errorf("CUDA_VISIBLE_DEVICES = %q; want GPU-sim-2", out)
	}

	hub.Forget("s1")
	select {
	case err := <-served:
		if !errors.Is(err, link.ErrStopped) || !errors.Is(err, net.ErrClosed) {
			t.Errorf("Serve after the session was stopped: %v; want link.ErrStopped", err)
		}
	case <-ctx.Done():
		t.Fatal("Serve kept serving after the control plane stopped the session")
	}
}
