//go:build linux && !agentonly

package aca

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/testutil"
)

// TestLive runs one session on a real Azure subscription: it starts a
// session with the operator's Azure credential, sees its agent link to a
// hub this test serves, runs a command in it, stops it, and checks that
// the job is gone. It is skipped unless DEVGPU_ACA_SUBSCRIPTION is set;
// then every variable marked required must be set too.
//
//	DEVGPU_ACA_SUBSCRIPTION      required: the subscription id
//	DEVGPU_ACA_RESOURCE_GROUP    required: the resource group of the environment and the jobs
//	DEVGPU_ACA_ENVIRONMENT       required: the managed environment's name
//	DEVGPU_ACA_GPU_PROFILE       required: its GPU workload profile's name (such as gpu-t4)
//	DEVGPU_ACA_GPU_TYPE          the devgpu GPU type it maps to (default t4)
//	DEVGPU_ACA_QUOTA             how many GPUs of that type the backend may run (default 1)
//	DEVGPU_ACA_REGISTRY          required: the ACR login server (contoso.azurecr.io); the
//	                             credential needs AcrPush on it
//	DEVGPU_ACA_REGISTRY_IDENTITY required: the resource id of a user-assigned identity with
//	                             AcrPull on the registry, which the jobs pull with
//	DEVGPU_ACA_IMAGE             the base image (default mcr.microsoft.com/azurelinux/base/core:3.0)
//	DEVGPU_ACA_LINK_URL          required: the https:// URL at which the environment's
//	                             containers reach this test's link hub
//	DEVGPU_ACA_LINK_LISTEN       required: the address this test's hub listens on (such as :8443)
//	DEVGPU_ACA_LINK_CERT         required: the PEM certificate the hub serves, valid for
//	DEVGPU_ACA_LINK_KEY          required: LINK_URL's host, and its PEM key
//	DEVGPU_ACA_LINK_CA           the PEM of the CA the agents trust for the hub (default:
//	                             the system's roots)
//	DEVGPU_ACA_START_TIMEOUT     how long the start may take (default 15m: a serverless GPU
//	                             replica's cold start takes minutes)
//
// The credential is azidentity's DefaultAzureCredential (az login,
// environment variables, workload or managed identity): it needs
// Contributor on the resource group (or a role with Microsoft.App/jobs/*
// and Microsoft.App/managedEnvironments/join/action) and Managed Identity
// Operator on the registry identity.
func TestLive(t *testing.T) {
	sub := os.Getenv("DEVGPU_ACA_SUBSCRIPTION")
	if sub == "" {
		t.Skip("DEVGPU_ACA_SUBSCRIPTION is not set: the live Azure test runs only when an operator points it at a subscription")
	}
	need := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			t.Fatalf("%s is not set; the live test needs it (see TestLive's comment)", name)
		}
		return v
	}
	orDefault := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	gpuType := orDefault("DEVGPU_ACA_GPU_TYPE", "t4")
	quota, err := strconv.Atoi(orDefault("DEVGPU_ACA_QUOTA", "1"))
	if err != nil {
		t.Fatalf("DEVGPU_ACA_QUOTA: %v", err)
	}
	startTimeout, err := time.ParseDuration(orDefault("DEVGPU_ACA_START_TIMEOUT", "15m"))
	if err != nil {
		t.Fatalf("DEVGPU_ACA_START_TIMEOUT: %v", err)
	}
	cfg := Config{
		Backend: "aca-live", Installation: installation(t),
		SubscriptionID: sub, ResourceGroup: need("DEVGPU_ACA_RESOURCE_GROUP"), Environment: need("DEVGPU_ACA_ENVIRONMENT"),
		GPUTypes:         map[string]string{gpuType: need("DEVGPU_ACA_GPU_PROFILE")},
		Quota:            map[string]int{gpuType: quota},
		Registry:         need("DEVGPU_ACA_REGISTRY"),
		RegistryIdentity: need("DEVGPU_ACA_REGISTRY_IDENTITY"),
		AgentBinary:      agentBinary,
		DefaultImage:     orDefault("DEVGPU_ACA_IMAGE", "mcr.microsoft.com/azurelinux/base/core:3.0"),
		LinkURL:          need("DEVGPU_ACA_LINK_URL"),
		ReplicaTimeout:   time.Hour,
		Logger:           testutil.Logger(t),
	}
	if caFile := os.Getenv("DEVGPU_ACA_LINK_CA"); caFile != "" {
		if cfg.LinkCA, err = os.ReadFile(caFile); err != nil {
			t.Fatalf("DEVGPU_ACA_LINK_CA: %v", err)
		}
	}
	cert, err := tls.LoadX509KeyPair(need("DEVGPU_ACA_LINK_CERT"), need("DEVGPU_ACA_LINK_KEY"))
	if err != nil {
		t.Fatalf("DEVGPU_ACA_LINK_CERT and DEVGPU_ACA_LINK_KEY: %v", err)
	}
	if cfg.Credential, err = azidentity.NewDefaultAzureCredential(nil); err != nil {
		t.Fatalf("the Azure credential: %v", err)
	}

	hub := link.NewHub(testutil.Logger(t))
	hub.SetVerifier(func(_, cred string) (bool, error) { return cred == testCredential, nil })
	ln, err := net.Listen("tcp", need("DEVGPU_ACA_LINK_LISTEN"))
	if err != nil {
		t.Fatalf("listen for the agents' links: %v", err)
	}
	srv := &http.Server{Handler: hub, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ReadHeaderTimeout: 30 * time.Second}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close(); hub.Close() })
	cfg.Link = hub

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout+5*time.Minute)
	defer cancel()
	r, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer r.Close()
	t.Logf("capacity %+v", r.capacity)

	s := spec("live")
	s.GPU.Type, s.GPU.Region = gpuType, ""
	s.Progress = func(step string, done, total int64) { t.Logf("start: %s (%d/%d)", step, done, total) }
	sctx, scancel := context.WithTimeout(ctx, startTimeout)
	pl, err := r.Start(sctx, s)
	scancel()
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = r.Stop(context.Background(), s.SessionID)
		}
	}()
	t.Logf("placed at %+v", pl)
	out := runtimetest.ExecOut(t, r, s, `echo -n "$DEVGPU_SESSION_ID|$CUDA_VISIBLE_DEVICES"`)
	if want := s.SessionID + "|" + strings.Join(pl.Devices, ","); out != want {
		t.Errorf("the session says %q, want %q", out, want)
	}
	if !listed(t, r, s.SessionID) {
		t.Error("the session is not listed")
	}
	if err := r.Stop(ctx, s.SessionID); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	stopped = true
	if _, err := r.jobs.Get(ctx, cfg.ResourceGroup, r.cfg.jobName(s.SessionID), nil); !notFound(err) {
		t.Fatalf("the session's job is still there after Stop: %v", err)
	}
	if _, err := r.Connect(ctx, s.SessionID); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Connect after Stop: %v, want not found", err)
	}
}
