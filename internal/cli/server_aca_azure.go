//go:build linux && !agentonly

package cli

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/aca"
)

// Azure public cloud's Resource Manager, as azcore's arm package defaults
// to it (azcore/arm/runtime: Endpoint https://management.azure.com,
// Audience https://management.core.windows.net/).
const (
	acaPublicResourceManager = "https://management.azure.com"
	acaPublicAudience        = "https://management.core.windows.net/"
)

// acaRuntime builds an aca backend's runtime: Container Apps jobs whose
// agents link to hub. devCA is the CA file of the server's --dev
// certificate, if it made one: the agents trust it when the backend names
// no link_ca_file. close ends the runtime's work.
func acaRuntime(ctx context.Context, name string, c *acaBackendConfig, installation string, hub *link.Hub, devCA string, log *slog.Logger) (rt runtime.Runtime, close func(), err error) {
	cfg, err := c.runtimeConfig(name, installation, hub, devCA, log)
	if err != nil {
		return nil, nil, err
	}
	r, err := aca.New(ctx, cfg)
	if err != nil {
		return nil, nil, err // it names the backend ("aca backend west: ...")
	}
	return r, r.Close, nil
}

// runtimeConfig turns the aca block into the runtime's Config: files read,
// the credential made, the ARM clients and the registry pointed at the
// block's cloud.
func (c *acaBackendConfig) runtimeConfig(name, installation string, hub *link.Hub, devCA string, log *slog.Logger) (aca.Config, error) {
	linkCA, err := readLinkCA(name, "aca.link_ca_file", c.LinkCAFile, devCA, hub)
	if err != nil {
		return aca.Config{}, err
	}
	agent, err := staticAgentPath(c.AgentBinary)
	if err != nil {
		return aca.Config{}, fmt.Errorf("backend %s: %w", name, err)
	}
	if _, err := os.Stat(agent); err != nil {
		return aca.Config{}, fmt.Errorf("backend %s: the static agent %s cannot be read (%v); build it with `make build`, or give aca.agent_binary", name, agent, err)
	}
	timeout, err := c.replicaTimeout()
	if err != nil {
		return aca.Config{}, fmt.Errorf("backend %s: %w", name, err)
	}
	transport, err := c.transport()
	if err != nil {
		return aca.Config{}, fmt.Errorf("backend %s: %w", name, err)
	}
	client := azcore.ClientOptions{Cloud: c.Cloud.configuration(), Transport: &http.Client{Transport: transport}}
	cred, err := c.Credential.credential(client)
	if err != nil {
		return aca.Config{}, fmt.Errorf("backend %s: %w", name, err)
	}
	resources := make(map[string]aca.Resources, len(c.Resources))
	for typ, r := range c.Resources {
		resources[typ] = aca.Resources{CPU: r.CPU, Memory: r.Memory}
	}
	return aca.Config{
		Backend: name, Installation: installation,
		SubscriptionID: c.SubscriptionID, ResourceGroup: c.ResourceGroup, Environment: c.Environment, Region: c.Region,
		GPUTypes: c.GPUTypes, Quota: c.Quota, QuotaFromAzure: c.QuotaFromAzure,
		Registry: c.Registry, Repository: c.Repository, RegistryIdentity: c.RegistryIdentity,
		AgentBinary: agent, DefaultImage: c.Image,
		LinkURL: c.LinkURL, LinkCA: linkCA, Link: hub,
		Egress: c.Egress, EgressAllow: c.EgressAllow, Resources: resources, ReplicaTimeout: timeout,
		Credential: cred, ClientOptions: &arm.ClientOptions{ClientOptions: client}, RegistryTransport: transport,
		Logger: log, // the runtime adds the backend's name
	}, nil
}

// transport is the transport of the backend's calls to ARM, the
// identity endpoint and the registries: Go's default, with cloud.ca_file's
// CAs trusted, besides the system's roots, only by the hosts of
// trustedHosts.
func (c *acaBackendConfig) transport() (http.RoundTripper, error) {
	public := http.DefaultTransport.(*http.Transport).Clone()
	if c.Cloud.CAFile == "" {
		return public, nil
	}
	pem, err := os.ReadFile(c.Cloud.CAFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read aca.cloud.ca_file %s (%v); give the PEM file of the CA that signed Azure's private endpoints, or remove it", c.Cloud.CAFile, err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool() // no system roots here: the file's alone
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("aca.cloud.ca_file %s holds no PEM certificate; give the PEM file of the CA that signed Azure's private endpoints", c.Cloud.CAFile)
	}
	private := http.DefaultTransport.(*http.Transport).Clone()
	private.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	trusted := map[string]bool{}
	for _, h := range c.trustedHosts() {
		trusted[h] = true
	}
	return &hostTLS{trusted: trusted, private: private, public: public}, nil
}

// trustedHosts are the hosts (host:port) that trust cloud.ca_file: the
// ARM endpoint's, the registry's, the identity endpoint's
// ($IDENTITY_ENDPOINT, where azidentity's managed identity asks in
// Container Apps and App Service) and a custom authority_host's. Microsoft
// Entra's public authorities are left out: a private CA has no business
// signing them.
func (c *acaBackendConfig) trustedHosts() []string {
	hosts := []string{urlHostPort(cmp.Or(c.Cloud.ResourceManager, acaPublicResourceManager)), hostPort("https", c.Registry)}
	if e := os.Getenv("IDENTITY_ENDPOINT"); e != "" {
		hosts = append(hosts, urlHostPort(e))
	}
	if a := c.Cloud.AuthorityHost; a != "" && !knownAuthority(a) {
		hosts = append(hosts, urlHostPort(a))
	}
	return slices.DeleteFunc(hosts, func(h string) bool { return h == "" })
}

// urlHostPort is the host:port of a URL; "" if it is none.
func urlHostPort(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	return hostPort(u.Scheme, u.Host)
}

// hostPort is host (which may carry a port) as lower-case host:port, the
// scheme's port where it has none.
func hostPort(scheme, host string) string {
	if host == "" {
		return ""
	}
	h, p, err := net.SplitHostPort(host)
	if err != nil { // no port
		h, p = strings.Trim(host, "[]"), "443"
		if scheme == "http" {
			p = "80"
		}
	}
	return net.JoinHostPort(strings.ToLower(h), p)
}

// hostTLS sends requests to the trusted hosts through private (which
// trusts cloud.ca_file) and every other request through public (the
// system's roots alone). It is chosen per request, so per hop of a
// redirect too.
type hostTLS struct {
	trusted         map[string]bool
	private, public *http.Transport
}

func (t *hostTLS) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.trusted[hostPort(r.URL.Scheme, r.URL.Host)] {
		return t.private.RoundTrip(r)
	}
	return t.public.RoundTrip(r)
}

// configuration is the azcore cloud the block names: Azure public cloud
// where it names none.
func (c acaCloudConfig) configuration() cloud.Configuration {
	return cloud.Configuration{
		ActiveDirectoryAuthorityHost: cmp.Or(c.AuthorityHost, cloud.AzurePublic.ActiveDirectoryAuthorityHost),
		Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: cmp.Or(c.ResourceManager, acaPublicResourceManager), Audience: cmp.Or(c.Audience, acaPublicAudience)},
		},
	}
}

// knownAuthorities are the Microsoft Entra hosts of Azure's public
// clouds, which answer azidentity's instance discovery.
var knownAuthorities = []string{cloud.AzurePublic.ActiveDirectoryAuthorityHost, cloud.AzureGovernment.ActiveDirectoryAuthorityHost, cloud.AzureChina.ActiveDirectoryAuthorityHost}

// knownAuthority reports whether host is one of knownAuthorities.
func knownAuthority(host string) bool {
	return slices.ContainsFunc(knownAuthorities, func(h string) bool {
		return strings.EqualFold(strings.TrimSuffix(host, "/"), strings.TrimSuffix(h, "/"))
	})
}

// credential makes the azidentity credential the block names, its
// requests going through client (the block's cloud and transport).
func (c acaCredentialConfig) credential(client azcore.ClientOptions) (azcore.TokenCredential, error) {
	// A private cloud's authority (Azure Stack) answers no instance
	// discovery, which azidentity's docs say to disable there.
	private := !knownAuthority(client.Cloud.ActiveDirectoryAuthorityHost)
	var (
		cred azcore.TokenCredential
		err  error
	)
	switch c.Kind {
	case "", "default":
		cred, err = c.serviceCredential(client, private)
	case "managed-identity":
		o := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: client}
		if c.ClientID != "" {
			o.ID = azidentity.ClientID(c.ClientID)
		}
		cred, err = azidentity.NewManagedIdentityCredential(o)
	case "workload-identity":
		cred, err = azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{ClientOptions: client,
			ClientID: c.ClientID, TenantID: c.TenantID, DisableInstanceDiscovery: private})
	case "client-secret":
		b, rerr := os.ReadFile(c.ClientSecretFile)
		if rerr != nil {
			return nil, fmt.Errorf("cannot read aca.credential.client_secret_file %s (%v); give the file that holds the service principal's secret", c.ClientSecretFile, rerr)
		}
		secret := strings.TrimSpace(string(b))
		if secret == "" {
			return nil, fmt.Errorf("aca.credential.client_secret_file %s is empty; write the service principal's secret into it", c.ClientSecretFile)
		}
		cred, err = azidentity.NewClientSecretCredential(c.TenantID, c.ClientID, secret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: client, DisableInstanceDiscovery: private})
	default:
		return nil, fmt.Errorf("aca.credential.kind %q is not default, managed-identity, workload-identity or client-secret; choose the identity this server runs with", c.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot make the %s credential of aca.credential (%v); check its fields and the environment's AZURE_* variables", cmp.Or(c.Kind, "default"), err)
	}
	return cred, nil
}

// serviceCredential is the "default" credential: the identity the
// environment gives this server, never a person's login. It chains, as
// azidentity's DefaultAzureCredential begins (azidentity v1.15
// default_azure_credential.go), a service principal of the environment's
// AZURE_* variables where they name one, workload identity where
// $AZURE_FEDERATED_TOKEN_FILE is set, and the managed identity (the
// user-assigned one of $AZURE_CLIENT_ID, if set); it leaves out what
// DefaultAzureCredential tries next, the logins of the Azure CLI, azd and
// Azure PowerShell.
func (c acaCredentialConfig) serviceCredential(client azcore.ClientOptions, private bool) (azcore.TokenCredential, error) {
	var chain []azcore.TokenCredential
	// NewEnvironmentCredential fails when the variables name no service
	// principal, which only means there is none to try.
	if env, err := azidentity.NewEnvironmentCredential(&azidentity.EnvironmentCredentialOptions{ClientOptions: client, DisableInstanceDiscovery: private}); err == nil {
		chain = append(chain, env)
	}
	if os.Getenv("AZURE_FEDERATED_TOKEN_FILE") != "" {
		wi, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{ClientOptions: client,
			TenantID: c.TenantID, DisableInstanceDiscovery: private})
		if err != nil {
			return nil, err
		}
		chain = append(chain, wi)
	}
	o := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: client}
	if id := os.Getenv("AZURE_CLIENT_ID"); id != "" {
		o.ID = azidentity.ClientID(id)
	}
	mi, err := azidentity.NewManagedIdentityCredential(o)
	if err != nil {
		return nil, err
	}
	return azidentity.NewChainedTokenCredential(append(chain, mi), nil)
}
