//go:build linux && !agentonly

package cli

import (
	"context"
	"encoding/pem"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/testutil"
)

// exampleACA is the documentation's config with an aca backend beside
// this host's oci runtime.
const exampleACA = `{
  "backends": [
    {"name": "host", "runtime": "oci"},
    {"name": "sweden", "runtime": "aca", "aca": {
       "subscription_id": "0b1f6471-1bf0-4dda-aec3-cb9272f09590", "resource_group": "devgpu", "environment": "gpu-env",
       "region": "", "gpu_types": {"t4": "gpu-t4", "a100": "gpu-a100"}, "quota": {"t4": 4}, "quota_from_azure": true,
       "registry": "contoso.azurecr.io", "repository": "devgpu/sessions",
       "registry_identity": "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/devgpu/providers/Microsoft.ManagedIdentity/userAssignedIdentities/devgpu-pull",
       "agent_binary": "/usr/lib/devgpu/devgpu-agent", "image": "mcr.microsoft.com/azurelinux/base/core:3.0",
       "link_url": "https://devgpu.contoso.com:8443", "link_ca_file": "",
       "egress": "allow-list", "egress_allow": ["10.0.0.0/8", "pypi.org"],
       "resources": {"t4": {"cpu": 8, "memory": "56Gi"}}, "replica_timeout": "12h",
       "credential": {"kind": "managed-identity", "client_id": "5e1c2a6b-8f00-4c3a-9d63-1a2b3c4d5e6f"},
       "cloud": {"resource_manager": "", "authority_host": "", "ca_file": ""}}}
  ]
}`

func TestAcaBackendConfig(t *testing.T) {
	t.Parallel()
	o, err := loadServerConfig(t, exampleACA)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.backends) != 2 || o.backends[1].Name != "sweden" || o.backends[1].Runtime != "aca" {
		t.Fatalf("backends = %+v", o.backends)
	}
	a := o.backends[1].Aca
	if a == nil || a.SubscriptionID != "0b1f6471-1bf0-4dda-aec3-cb9272f09590" || a.ResourceGroup != "devgpu" || a.Environment != "gpu-env" ||
		a.GPUTypes["a100"] != "gpu-a100" || a.Quota["t4"] != 4 || !a.QuotaFromAzure || a.Registry != "contoso.azurecr.io" ||
		!strings.HasSuffix(a.RegistryIdentity, "/devgpu-pull") || a.AgentBinary != "/usr/lib/devgpu/devgpu-agent" ||
		a.LinkURL != "https://devgpu.contoso.com:8443" || a.Egress != "allow-list" || len(a.EgressAllow) != 2 ||
		a.Resources["t4"] != (acaResources{CPU: 8, Memory: "56Gi"}) || a.ReplicaTimeout != "12h" ||
		a.Credential != (acaCredentialConfig{Kind: "managed-identity", ClientID: "5e1c2a6b-8f00-4c3a-9d63-1a2b3c4d5e6f"}) {
		t.Fatalf("aca block = %+v", a)
	}
	if d, err := a.replicaTimeout(); err != nil || d != 12*time.Hour {
		t.Fatalf("replica_timeout 12h read as %s, %v", d, err)
	}
	got, err := o.resolveBackends(slog.New(slog.DiscardHandler))
	if err != nil || len(got) != 2 || o.runtime != "oci" {
		t.Fatalf("resolved %+v (%v) with the host's runtime %q, want both backends and oci", got, err, o.runtime)
	}
	// A misspelt field of the aca block is refused, not ignored, and so is
	// a secret written into the config rather than a file.
	for _, bad := range []string{`"subscriptionid"`, `"client_secret"`} {
		text := strings.Replace(exampleACA, `"subscription_id"`, bad, 1)
		if bad == `"client_secret"` {
			text = strings.Replace(exampleACA, `"client_id": "5e1c`, `"client_secret": "hunter2", "client_id": "5e1c`, 1)
		}
		if _, err := loadServerConfig(t, text); err == nil || !strings.Contains(err.Error(), strings.Trim(bad, `"`)) {
			t.Errorf("config with %s: %v, want an error naming it", bad, err)
		}
	}
}

// acaPullIdentity is a user-assigned identity's resource id, what
// registry_identity takes ("system" is refused: a new job's system
// identity has no AcrPull at its first pull).
const acaPullIdentity = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull"

// validACA is the smallest aca block aca.New's check accepts; edit changes
// it.
func validACA(edit func(*acaBackendConfig)) *acaBackendConfig {
	a := &acaBackendConfig{
		SubscriptionID: "0b1f6471-1bf0-4dda-aec3-cb9272f09590", ResourceGroup: "rg", Environment: "env",
		GPUTypes: map[string]string{"t4": "gpu-t4"}, Quota: map[string]int{"t4": 2},
		Registry: "contoso.azurecr.io", RegistryIdentity: acaPullIdentity, Image: "busybox:1", LinkURL: "https://10.0.0.5:8443",
	}
	if edit != nil {
		edit(a)
	}
	return a
}

func TestValidateAcaBackend(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		backends []backendConfig
		want     string // in the error; "" for none
	}{
		{"smallest", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(nil)}}, ""},
		{"beside host and cluster", []backendConfig{{Name: "host", Runtime: "oci"}, {Name: "k", Runtime: "kube", Kube: &kubeBackendConfig{LinkURL: "https://h:1", AgentImage: "a"}},
			{Name: "a", Runtime: "aca", Aca: validACA(nil)}}, ""},
		{"every field", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(func(a *acaBackendConfig) {
			a.Quota, a.QuotaFromAzure, a.Repository = nil, true, "devgpu/sessions"
			a.Egress, a.EgressAllow = "allow-list", []string{"10.0.0.0/8"}
			a.Resources = map[string]acaResources{"t4": {CPU: 4, Memory: "0.5Gi"}}
			a.ReplicaTimeout = "90m"
			a.Credential = acaCredentialConfig{Kind: "client-secret", TenantID: "t", ClientID: "c", ClientSecretFile: "/etc/devgpu/secret"}
			a.Cloud = acaCloudConfig{ResourceManager: "https://management.usgovcloudapi.net", Audience: "https://management.core.usgovcloudapi.net", AuthorityHost: "https://login.microsoftonline.us/"}
		})}}, ""},
		{"no block", []backendConfig{{Name: "a", Runtime: "aca"}}, `runtime aca needs an "aca" block`},
		{"aca block on kube", []backendConfig{{Name: "a", Runtime: "kube", Kube: &kubeBackendConfig{LinkURL: "https://h:1", AgentImage: "a"}, Aca: validACA(nil)}}, `an "aca" block belongs only to runtime aca`},
		{"aca block on oci", []backendConfig{{Name: "a", Runtime: "oci", Aca: validACA(nil)}}, `an "aca" block belongs only to runtime aca`},
		{"kube block on aca", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(nil), Kube: &kubeBackendConfig{}}}, `a "kube" block belongs only to runtime kube`},
		{"bad replica timeout", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(func(a *acaBackendConfig) { a.ReplicaTimeout = "1 day" })}}, `aca.replica_timeout "1 day" is not a duration`},
		{"unknown credential", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(func(a *acaBackendConfig) { a.Credential.Kind = "cli" })}}, `aca.credential.kind "cli" is not default, managed-identity`},
		{"secret without file", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(func(a *acaBackendConfig) {
			a.Credential = acaCredentialConfig{Kind: "client-secret", TenantID: "t", ClientID: "c"}
		})}}, "aca.credential.client_secret_file is missing"},
		{"secret file for managed identity", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(func(a *acaBackendConfig) {
			a.Credential = acaCredentialConfig{Kind: "managed-identity", ClientSecretFile: "/s"}
		})}}, "aca.credential.client_secret_file has no meaning for a managed-identity credential"},
		{"client id for default", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(func(a *acaBackendConfig) { a.Credential.ClientID = "c" })}}, "aca.credential.client_id has no meaning for a default credential"},
		{"http resource manager", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(func(a *acaBackendConfig) { a.Cloud.ResourceManager = "http://127.0.0.1:1" })}}, `aca.cloud.resource_manager "http://127.0.0.1:1" is not an https:// URL`},
		{"audience alone", []backendConfig{{Name: "a", Runtime: "aca", Aca: validACA(func(a *acaBackendConfig) { a.Cloud.Audience = "https://x" })}}, "aca.cloud.audience is given without aca.cloud.resource_manager"},
	} {
		err := validateBackends(c.backends)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		case err != nil && strings.Count(err.Error(), ";") != 1:
			t.Errorf("%s: %q is not one sentence of cause; fix", c.name, err)
		}
	}
}

// aca.New's check is the one judge of the block's rules: what validate
// leaves to it is refused when the server builds the backend, before any
// call to Azure, in one sentence that names the backend and the field.
func TestAcaCheckErrorsNameTheField(t *testing.T) {
	t.Parallel()
	agent := filepath.Join(t.TempDir(), "devgpu-agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	hub := link.NewHub(log)
	t.Cleanup(hub.Close)
	for _, c := range []struct {
		name string
		edit func(*acaBackendConfig)
		want string
	}{
		{"no subscription", func(a *acaBackendConfig) { a.SubscriptionID = "" }, "aca.subscription_id"},
		{"no environment", func(a *acaBackendConfig) { a.Environment = "" }, "aca.environment"},
		{"no image", func(a *acaBackendConfig) { a.Image = "" }, "aca.image"},
		{"registry URL", func(a *acaBackendConfig) { a.Registry = "https://contoso.azurecr.io/" }, "aca.registry"},
		{"bad repository", func(a *acaBackendConfig) { a.Repository = "DevGPU/Sessions" }, "aca.repository"},
		{"system identity", func(a *acaBackendConfig) { a.RegistryIdentity = "system" }, "aca.registry_identity"},
		{"identity by name", func(a *acaBackendConfig) { a.RegistryIdentity = "devgpu-pull" }, "aca.registry_identity"},
		{"http link_url", func(a *acaBackendConfig) { a.LinkURL = "http://10.0.0.5:8470" }, "aca.link_url"},
		{"replica timeout under a minute", func(a *acaBackendConfig) { a.ReplicaTimeout = "30s" }, "aca.replica_timeout"},
		{"no gpu types", func(a *acaBackendConfig) { a.GPUTypes = nil }, "aca.gpu_types"},
		{"no quota", func(a *acaBackendConfig) { a.Quota = nil }, "aca.quota"},
		{"memory in GB", func(a *acaBackendConfig) { a.Resources = map[string]acaResources{"t4": {CPU: 1, Memory: "56GB"}} }, "aca.resources"},
		{"bad egress", func(a *acaBackendConfig) { a.Egress = "vnet" }, "aca.egress"},
	} {
		a := validACA(func(a *acaBackendConfig) { a.AgentBinary = agent; c.edit(a) })
		// validate lets it through: the check is aca.New's alone.
		if err := validateBackends([]backendConfig{{Name: "west", Runtime: "aca", Aca: a}}); err != nil {
			t.Errorf("%s: validate refused it (%v); aca.New is its judge", c.name, err)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitShort)
		_, _, err := acaRuntime(ctx, "west", a, "inst0001", hub, "", log)
		cancel()
		if err == nil || !strings.HasPrefix(err.Error(), "aca backend west") || !strings.Contains(err.Error(), c.want) || strings.Count(err.Error(), ";") != 1 {
			t.Errorf("%s: %v, want one sentence of aca backend west naming %s", c.name, err, c.want)
		}
	}
}

// writeCA writes the PEM of srv's certificate, which httptest signs
// itself, and returns the file.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, block, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The runtime's Config carries the block through: the cloud's endpoints,
// a transport that trusts ca_file besides the system's roots for the ARM
// endpoint's and the registry's hosts only, the link CA (by default the --dev one) given to the
// hub, and the agent beside this executable unless named.
func TestAcaRuntimeConfig(t *testing.T) {
	t.Parallel()
	private := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "private endpoint") }))
	private.Config.ErrorLog = stdlog.New(io.Discard, "", 0) // the handshake refused below on purpose
	private.StartTLS()
	t.Cleanup(private.Close)
	caFile := writeCA(t, private)
	agent := filepath.Join(t.TempDir(), "devgpu-agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	devCA := filepath.Join(t.TempDir(), "dev-ca.pem")
	if err := os.WriteFile(devCA, []byte("-----BEGIN CERTIFICATE-----\ndev\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	hub := link.NewHub(log)
	t.Cleanup(hub.Close)

	a := validACA(func(a *acaBackendConfig) {
		a.AgentBinary, a.Image, a.ReplicaTimeout = agent, "busybox:1", "2h"
		a.Resources = map[string]acaResources{"t4": {CPU: 8, Memory: "56Gi"}}
		a.Credential = acaCredentialConfig{Kind: "managed-identity"}
		a.Cloud = acaCloudConfig{ResourceManager: private.URL, AuthorityHost: "https://login.microsoftonline.us/", CAFile: caFile}
	})
	cfg, err := a.runtimeConfig("west", "inst0001", hub, devCA, log)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Backend != "west" || cfg.Installation != "inst0001" || cfg.SubscriptionID != a.SubscriptionID || cfg.AgentBinary != agent ||
		cfg.DefaultImage != "busybox:1" || cfg.ReplicaTimeout != 2*time.Hour || cfg.Resources["t4"].Memory != "56Gi" || cfg.Link != hub ||
		cfg.Credential == nil || cfg.Logger != log {
		t.Fatalf("config = %+v", cfg)
	}
	if _, ok := cfg.Credential.(*azidentity.ManagedIdentityCredential); !ok {
		t.Fatalf("credential %T, want a managed identity's", cfg.Credential)
	}
	if string(cfg.LinkCA) != "-----BEGIN CERTIFICATE-----\ndev\n-----END CERTIFICATE-----\n" || len(hub.CAs()) != 1 {
		t.Fatalf("link CA %q, hub CAs %d: want the --dev CA, given to the hub", cfg.LinkCA, len(hub.CAs()))
	}
	got := cfg.ClientOptions.Cloud
	if rm := got.Services[cloud.ResourceManager]; rm.Endpoint != private.URL || rm.Audience != acaPublicAudience || got.ActiveDirectoryAuthorityHost != "https://login.microsoftonline.us/" {
		t.Fatalf("cloud = %+v", got)
	}
	// ARM's transport and the registry's trust the private endpoint's CA
	// for the ARM endpoint's host; a host outside the list, whose
	// certificate the same CA signed (httptest gives every server one
	// certificate), is refused: there the system's roots alone are trusted.
	other := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "another host") }))
	other.Config.ErrorLog = stdlog.New(io.Discard, "", 0)
	other.StartTLS()
	t.Cleanup(other.Close)
	arm, ok := cfg.ClientOptions.Transport.(*http.Client)
	if !ok {
		t.Fatalf("ARM transport %T", cfg.ClientOptions.Transport)
	}
	for what, c := range map[string]*http.Client{"ARM": arm, "registry": {Transport: cfg.RegistryTransport}} {
		resp, err := c.Get(private.URL)
		if err != nil {
			t.Fatalf("%s through the configured transport: %v", what, err)
		}
		resp.Body.Close()
		if resp, err := c.Get(other.URL); err == nil {
			resp.Body.Close()
			t.Fatalf("%s: a host outside the list (%s) trusted cloud.ca_file", what, other.URL)
		}
	}
	// The registry's host is on the list.
	reg, err := validACA(func(a *acaBackendConfig) {
		a.AgentBinary, a.Registry, a.Cloud.CAFile = agent, strings.TrimPrefix(other.URL, "https://"), caFile
	}).runtimeConfig("west", "inst0001", hub, "", log)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: reg.RegistryTransport}).Get(other.URL)
	if err != nil {
		t.Fatalf("the registry's host through the configured transport: %v", err)
	}
	resp.Body.Close()
	// Without ca_file, the same endpoint is not trusted.
	plain, err := validACA(func(a *acaBackendConfig) { a.AgentBinary = agent }).runtimeConfig("west", "inst0001", hub, "", log)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := (&http.Client{Transport: plain.RegistryTransport}).Get(private.URL); err == nil {
		resp.Body.Close()
		t.Fatal("a transport without ca_file trusted the private endpoint's CA")
	}
	if rm := plain.ClientOptions.Cloud.Services[cloud.ResourceManager]; rm.Endpoint != acaPublicResourceManager || plain.ClientOptions.Cloud.ActiveDirectoryAuthorityHost != cloud.AzurePublic.ActiveDirectoryAuthorityHost {
		t.Fatalf("default cloud = %+v, want Azure public", plain.ClientOptions.Cloud)
	}
	if _, ok := plain.Credential.(*azidentity.ChainedTokenCredential); !ok {
		t.Fatalf("credential %T for no kind, want the chain of the server's own identities", plain.Credential)
	}
}

// What runtimeConfig refuses, each in one sentence naming the field.
func TestAcaRuntimeConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	agent := filepath.Join(dir, "devgpu-agent")
	empty := filepath.Join(dir, "empty")
	notPEM := filepath.Join(dir, "not.pem")
	for path, body := range map[string]string{agent: "agent", empty: "\n", notPEM: "hello"} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.DiscardHandler)
	hub := link.NewHub(log)
	t.Cleanup(hub.Close)
	for _, c := range []struct {
		name string
		edit func(*acaBackendConfig)
		want string
	}{
		{"agent missing", func(a *acaBackendConfig) { a.AgentBinary = filepath.Join(dir, "nope") }, "the static agent " + filepath.Join(dir, "nope") + " cannot be read"},
		{"link CA missing", func(a *acaBackendConfig) { a.LinkCAFile = filepath.Join(dir, "nope.pem") }, "cannot read aca.link_ca_file"},
		{"cloud CA missing", func(a *acaBackendConfig) { a.Cloud.CAFile = filepath.Join(dir, "nope.pem") }, "cannot read aca.cloud.ca_file"},
		{"cloud CA not PEM", func(a *acaBackendConfig) { a.Cloud.CAFile = notPEM }, "holds no PEM certificate"},
		{"secret file missing", func(a *acaBackendConfig) {
			a.Credential = acaCredentialConfig{Kind: "client-secret", TenantID: "t", ClientID: "c", ClientSecretFile: filepath.Join(dir, "nope")}
		}, "cannot read aca.credential.client_secret_file"},
		{"secret file empty", func(a *acaBackendConfig) {
			a.Credential = acaCredentialConfig{Kind: "client-secret", TenantID: "t", ClientID: "c", ClientSecretFile: empty}
		}, "aca.credential.client_secret_file " + empty + " is empty"},
	} {
		_, err := validACA(func(a *acaBackendConfig) { a.AgentBinary = agent; c.edit(a) }).runtimeConfig("west", "inst0001", hub, "", log)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "backend west: ") {
			t.Errorf("%s: %v, want an error of backend west with %q", c.name, err, c.want)
		} else if strings.Count(err.Error(), ";") != 1 {
			t.Errorf("%s: %q is not one sentence of cause; fix", c.name, err)
		}
	}
}

// Each kind of credential gets tokens the way it says: a service
// principal's secret is read from its file and sent to the authority
// named by cloud.authority_host; a managed identity asks the endpoint of
// IDENTITY_ENDPOINT (as in Container Apps and App Service) through the
// transport that trusts cloud.ca_file; the default is the environment's
// service principal or the managed identity, never the Azure CLI.
func TestAcaCredentials(t *testing.T) {
	// t.Setenv: not parallel.
	var (
		mu                        sync.Mutex
		identityCalls, secretSeen []string
	)
	seen := func() ([]string, []string) {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(identityCalls), slices.Clone(secretSeen)
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.URL.Path == "/msi/token":
			// App Service's managed identity protocol, which Container Apps
			// serves: https://learn.microsoft.com/azure/container-apps/managed-identity#rest-endpoint-reference
			identityCalls = append(identityCalls, r.Header.Get("X-IDENTITY-HEADER")+" "+r.URL.Query().Get("resource")+" "+r.URL.Query().Get("client_id"))
			fmt.Fprintf(w, `{"access_token":"mi-token","expires_on":"%d","resource":%q,"token_type":"Bearer"}`, time.Now().Add(time.Hour).Unix(), r.URL.Query().Get("resource"))
		case strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token"):
			if err := r.ParseForm(); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			secretSeen = append(secretSeen, r.PostForm.Get("client_id")+" "+r.PostForm.Get("client_secret")+" "+r.PostForm.Get("scope"))
			fmt.Fprint(w, `{"token_type":"Bearer","expires_in":3600,"ext_expires_in":3600,"access_token":"sp-token"}`)
		case strings.HasSuffix(r.URL.Path, "/v2.0/.well-known/openid-configuration"):
			tenant := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")[0]
			base := "https://" + r.Host + "/" + tenant
			fmt.Fprintf(w, `{"token_endpoint":%q,"authorization_endpoint":%q,"issuer":%q}`, base+"/oauth2/v2.0/token", base+"/oauth2/v2.0/authorize", base+"/v2.0")
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	caFile := writeCA(t, srv)
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(t.TempDir(), "devgpu-agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("IDENTITY_ENDPOINT", srv.URL+"/msi/token")
	t.Setenv("IDENTITY_HEADER", "header-of-the-test")
	log := slog.New(slog.DiscardHandler)
	hub := link.NewHub(log)
	t.Cleanup(hub.Close)
	// The server's own environment: no service principal, no workload
	// identity, no user-assigned identity named.
	unset := func(vars ...string) {
		for _, v := range vars {
			t.Setenv(v, "") // restored at the test's end
			os.Unsetenv(v)
		}
	}
	unset("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_TOKEN_CREDENTIALS")
	getToken := func(cred acaCredentialConfig, scope string) (string, error) {
		t.Helper()
		cfg, err := validACA(func(a *acaBackendConfig) {
			a.AgentBinary, a.Credential = agent, cred
			a.Cloud = acaCloudConfig{ResourceManager: "https://arm.example", Audience: "https://arm.example/", AuthorityHost: srv.URL + "/", CAFile: caFile}
		}).runtimeConfig("west", "inst0001", hub, "", log)
		if err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitMedium)
		defer cancel()
		tok, err := cfg.Credential.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}})
		return tok.Token, err
	}
	token := func(cred acaCredentialConfig) string {
		t.Helper()
		tok, err := getToken(cred, "https://arm.example/.default")
		if err != nil {
			t.Fatalf("%q credential: %v", cred.Kind, err)
		}
		return tok
	}
	got := token(acaCredentialConfig{Kind: "managed-identity", ClientID: "uami-client"})
	if calls, _ := seen(); got != "mi-token" || len(calls) != 1 || calls[0] != "header-of-the-test https://arm.example uami-client" {
		t.Fatalf("managed identity: token %q after calls %q", got, calls)
	}
	got = token(acaCredentialConfig{Kind: "client-secret", TenantID: "tenant1", ClientID: "sp-client", ClientSecretFile: secretFile})
	if _, reqs := seen(); got != "sp-token" || len(reqs) != 1 || !strings.HasPrefix(reqs[0], "sp-client s3cret https://arm.example/.default") {
		t.Fatalf("client secret: token %q after token requests %q", got, reqs)
	}

	// The default credential is the server's own identity: its managed
	// identity here,
	got = token(acaCredentialConfig{})
	if calls, _ := seen(); got != "mi-token" || len(calls) != 2 || calls[1] != "header-of-the-test https://arm.example " {
		t.Fatalf("default credential: token %q after calls %q, want the managed identity's", got, calls)
	}
	// a service principal where the environment's variables name one,
	t.Setenv("AZURE_TENANT_ID", "tenant2")
	t.Setenv("AZURE_CLIENT_ID", "env-client")
	t.Setenv("AZURE_CLIENT_SECRET", "env-secret")
	got = token(acaCredentialConfig{Kind: "default"})
	if _, reqs := seen(); got != "sp-token" || len(reqs) != 2 || !strings.HasPrefix(reqs[1], "env-client env-secret https://arm.example/.default") {
		t.Fatalf("default credential with a service principal's variables: token %q after token requests %q", got, reqs)
	}
	unset("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
	// and never a person's login: where the managed identity has no token,
	// an Azure CLI on PATH is not run, even where the environment asks
	// azidentity's DefaultAzureCredential for it (AZURE_TOKEN_CREDENTIALS).
	bin := t.TempDir()
	ran := filepath.Join(t.TempDir(), "az-ran")
	az := "#!/bin/sh\ntouch " + ran + "\necho '{\"accessToken\":\"cli-token\",\"expiresOn\":\"2099-01-01 00:00:00.000000\",\"expires_on\":4070908800,\"tokenType\":\"Bearer\"}'\n"
	if err := os.WriteFile(filepath.Join(bin, "az"), []byte(az), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("IDENTITY_ENDPOINT", srv.URL+"/msi/none")
	t.Setenv("AZURE_TOKEN_CREDENTIALS", "AzureCLICredential")
	// (Another scope: azidentity's managed identity caches tokens across
	// credentials.)
	if got, err := getToken(acaCredentialConfig{}, "https://other.example/.default"); err == nil {
		t.Fatalf("default credential without an identity got token %q", got)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the default credential ran the Azure CLI, a person's login")
	}
}

// The README's example of an aca backend is a config the server takes.
func TestAcaReadmeExample(t *testing.T) {
	t.Parallel()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var example string
	for _, block := range strings.Split(string(readme), "```json\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if strings.Contains(block, `"runtime": "aca"`) {
			example = block
			break
		}
	}
	if example == "" {
		t.Fatal("README.md has no json example with an aca backend")
	}
	o, err := loadServerConfig(t, example)
	if err != nil {
		t.Fatal(err)
	}
	if err := validateBackends(o.backends); err != nil {
		t.Fatalf("the README's aca example: %v", err)
	}
}

// cloud.ca_file is trusted by the hosts the block configures, never by
// Microsoft Entra's public authority.
func TestAcaTrustedHosts(t *testing.T) {
	t.Setenv("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token")
	for _, c := range []struct {
		cloud acaCloudConfig
		want  []string
	}{
		{acaCloudConfig{}, []string{"management.azure.com:443", "contoso.azurecr.io:443", "localhost:42356"}},
		{acaCloudConfig{ResourceManager: "https://ARM.example:8443/", AuthorityHost: "https://login.microsoftonline.com/"},
			[]string{"arm.example:8443", "contoso.azurecr.io:443", "localhost:42356"}},
		{acaCloudConfig{ResourceManager: "https://management.local.azurestack.external", AuthorityHost: "https://adfs.local.azurestack.external/adfs/"},
			[]string{"management.local.azurestack.external:443", "contoso.azurecr.io:443", "localhost:42356", "adfs.local.azurestack.external:443"}},
	} {
		got := validACA(func(a *acaBackendConfig) { a.Cloud = c.cloud }).trustedHosts()
		if !slices.Equal(got, c.want) {
			t.Errorf("cloud %+v: ca_file trusted by %q, want %q", c.cloud, got, c.want)
		}
	}
}
