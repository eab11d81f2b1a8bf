//go:build linux && !agentonly

package cli

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
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
	var linkCA []byte
	if caFile := cmp.Or(c.LinkCAFile, devCA); caFile != "" {
		var err error
		if linkCA, err = os.ReadFile(caFile); err != nil {
			return aca.Config{}, fmt.Errorf("backend %s: cannot read aca.link_ca_file %s (%v); give the PEM file of the CA that signed this server's certificate", name, caFile, err)
		}
	}
	// The CA that signed this server's certificate signed its replicas'
	// too: they trust it when they relay streams to one another.
	hub.AddCA(linkCA)
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
	transport, err := acaTransport(c.Cloud.CAFile)
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

// acaTransport is the transport of the backend's calls to ARM, the
// identity endpoint and the registry: Go's default, trusting the CAs of
// caFile in addition to the system's roots.
func acaTransport(caFile string) (*http.Transport, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if caFile == "" {
		return t, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read aca.cloud.ca_file %s (%v); give the PEM file of the CA that signed Azure's private endpoints, or remove it", caFile, err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool() // no system roots here: the file's alone
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("aca.cloud.ca_file %s holds no PEM certificate; give the PEM file of the CA that signed Azure's private endpoints", caFile)
	}
	t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return t, nil
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

// credential makes the azidentity credential the block names, its
// requests going through client (the block's cloud and transport).
func (c acaCredentialConfig) credential(client azcore.ClientOptions) (azcore.TokenCredential, error) {
	// A private cloud's authority (Azure Stack) answers no instance
	// discovery, which azidentity's docs say to disable there.
	private := true
	for _, h := range knownAuthorities {
		if strings.TrimSuffix(client.Cloud.ActiveDirectoryAuthorityHost, "/") == strings.TrimSuffix(h, "/") {
			private = false
		}
	}
	var (
		cred azcore.TokenCredential
		err  error
	)
	switch c.Kind {
	case "", "default":
		cred, err = azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: client, TenantID: c.TenantID, DisableInstanceDiscovery: private})
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
