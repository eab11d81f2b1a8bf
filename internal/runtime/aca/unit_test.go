//go:build linux && !agentonly

package aca

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	azruntime "github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/appcontainers/armappcontainers/v3"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/sdk"
)

// staticToken is a credential that never asks anyone.
type staticToken struct{}

func (staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "t", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// unitConfig is a valid Config that reaches nothing.
func unitConfig() Config {
	return Config{
		Backend: "aca1", Installation: "inst-a",
		SubscriptionID: "sub", ResourceGroup: "rg", Environment: "env",
		GPUTypes: map[string]string{"t4": "gpu-t4", "a100": "gpu-a100"},
		Quota:    map[string]int{"t4": 2, "a100": 1},
		Registry: "contoso.azurecr.io", RegistryIdentity: "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull",
		AgentBinary: "/bin/devgpu-agent", DefaultImage: "mcr.microsoft.com/base:1",
		LinkURL: "https://cp.example.com:8443", Link: link.NewHub(nil),
		Credential: staticToken{},
	}
}

// checkedUnit is unitConfig checked, with what New would learn from the
// environment.
func checkedUnit(t *testing.T, cfg Config) *checked {
	t.Helper()
	c, err := check(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.region = "swedencentral"
	c.environmentID = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.App/managedEnvironments/env"
	c.profileTypes = map[string]string{"gpu-t4": "Consumption-GPU-NC8as-T4", "gpu-a100": "Consumption-GPU-NC24-A100"}
	return c
}

func TestCheckDefaults(t *testing.T) {
	c, err := check(unitConfig())
	if err != nil {
		t.Fatal(err)
	}
	if c.Repository != DefaultRepository || c.ReplicaTimeout != DefaultReplicaTimeout || c.Egress != sdk.EgressAll || c.Logger == nil {
		t.Fatalf("defaults: repository %q, replica timeout %s, egress %q, logger %v", c.Repository, c.ReplicaTimeout, c.Egress, c.Logger)
	}
}

func TestCheckErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"no backend", func(c *Config) { c.Backend = "" }, "the backend has no name"},
		{"no installation", func(c *Config) { c.Installation = "" }, "installation id is empty"},
		{"no subscription", func(c *Config) { c.SubscriptionID = "" }, "aca.subscription_id is not set"},
		{"no resource group", func(c *Config) { c.ResourceGroup = "" }, "aca.resource_group is not set"},
		{"no environment", func(c *Config) { c.Environment = "" }, "aca.environment is not set"},
		{"no registry", func(c *Config) { c.Registry = "" }, "aca.registry is not set"},
		{"registry URL", func(c *Config) { c.Registry = "https://contoso.azurecr.io" }, "is not a registry login server"},
		{"bad repository", func(c *Config) { c.Repository = "Dev/Sessions" }, "aca.repository \"Dev/Sessions\" is not a repository name"},
		{"bad identity", func(c *Config) { c.RegistryIdentity = "pull" }, "aca.registry_identity \"pull\" is not a user-assigned identity's resource id"},
		{"system identity", func(c *Config) { c.RegistryIdentity = "system" }, "aca.registry_identity \"system\" cannot pull: every session is a new job"},
		{"no agent", func(c *Config) { c.AgentBinary = "" }, "aca.agent_binary is not set"},
		{"no image", func(c *Config) { c.DefaultImage = "" }, "aca.image is not set"},
		{"no credential", func(c *Config) { c.Credential = nil }, "no Azure credential"},
		{"no hub", func(c *Config) { c.Link = nil }, "no link hub"},
		{"http link", func(c *Config) { c.LinkURL = "http://cp:80" }, "aca.link_url \"http://cp:80\" is not an https:// URL"},
		{"short timeout", func(c *Config) { c.ReplicaTimeout = time.Second }, "aca.replica_timeout 1s is out of range"},
		{"fractional timeout", func(c *Config) { c.ReplicaTimeout = 90*time.Second + 500*time.Millisecond }, "aca.replica_timeout 1m30.5s is not a whole number of seconds"},
		{"no types", func(c *Config) { c.GPUTypes = nil }, "offers no GPU type"},
		{"empty profile", func(c *Config) { c.GPUTypes = map[string]string{"t4": ""} }, "maps \"t4\" to workload profile \"\""},
		{"no quota", func(c *Config) { delete(c.Quota, "a100") }, "GPU type a100 has no quota; set aca.quota.a100"},
		{"negative quota", func(c *Config) { c.Quota["t4"] = -1 }, "aca.quota of GPU type t4 is -1"},
		{"quota of unmapped type", func(c *Config) { c.Quota["h100"] = 1 }, "aca.quota names GPU type h100"},
		{"bad memory", func(c *Config) { c.Resources = map[string]Resources{"t4": {CPU: 4, Memory: "16GB"}} }, "aca.resources of GPU type t4"},
		{"bad egress", func(c *Config) { c.Egress = "some" }, "aca.egress \"some\" is not one of"},
		{"allow without list", func(c *Config) { c.Egress = sdk.EgressAllowList }, "with no aca.egress_allow"},
		{"list without allow", func(c *Config) { c.EgressAllow = []string{"10.0.0.0/8"} }, "aca.egress_allow is set but aca.egress is \"all\""},
		{"bad allow entry", func(c *Config) { c.Egress, c.EgressAllow = sdk.EgressAllowList, []string{"10.0.0.1:99999"} }, "invalid port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := unitConfig()
			cfg.Quota = map[string]int{"t4": 2, "a100": 1}
			tc.modify(&cfg)
			_, err := check(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check: %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q is not one line", err)
			}
		})
	}
	cfg := unitConfig()
	cfg.Quota = map[string]int{"t4": 2}
	cfg.QuotaFromAzure = true
	if _, err := check(cfg); err != nil {
		t.Fatalf("a type without quota with quota_from_azure: %v", err)
	}
}

func TestJobName(t *testing.T) {
	a := checkedUnit(t, unitConfig())
	otherCfg := unitConfig()
	otherCfg.Installation = "inst-b"
	b := checkedUnit(t, otherCfg)
	long := strings.Repeat("x", 40)
	for _, id := range []string{"s1", "envtest-123456789", long} {
		n := a.jobName(id)
		if !validJobName(n) {
			t.Errorf("jobName(%q) = %q, not a valid job name", id, n)
		}
		if n != a.jobName(id) {
			t.Errorf("jobName(%q) is not stable", id)
		}
		if n == b.jobName(id) {
			t.Errorf("two installations name session %q's job alike: %q", id, n)
		}
	}
	if a.jobName("s1") == a.jobName("s2") {
		t.Error("two sessions share a job name")
	}
	for name, want := range map[string]bool{
		"dg-0123": true, "a": false, "1abc": false, "abc-": false, "Abc": false, "ab_c": false,
		strings.Repeat("a", 32): true, strings.Repeat("a", 33): false,
	} {
		if validJobName(name) != want {
			t.Errorf("validJobName(%q) = %v, want %v", name, !want, want)
		}
	}
}

func TestJobObject(t *testing.T) {
	cfg := unitConfig()
	cfg.LinkCA = []byte("-----BEGIN CERTIFICATE-----\n")
	cfg.ReplicaTimeout = 2 * time.Hour
	c := checkedUnit(t, cfg)
	spec := runtime.Spec{
		SessionID: "s1", Project: "proj", User: "alice@example.com",
		GPU:         runtime.GPURequest{Type: "t4", Region: "swedencentral", Count: 1},
		Env:         map[string]string{"FOO": "bar"},
		AgentSecret: "agent-secret-value", LinkCredential: "link-cred-value", IdleExit: time.Minute,
	}
	job := c.job(spec, "contoso.azurecr.io/devgpu/sessions:tag")
	p := job.Properties
	conf := p.Configuration
	if *job.Location != "swedencentral" || *p.EnvironmentID != c.environmentID || *p.WorkloadProfileName != "gpu-t4" {
		t.Fatalf("location %s, environment %s, profile %s", *job.Location, *p.EnvironmentID, *p.WorkloadProfileName)
	}
	if *conf.TriggerType != armappcontainers.TriggerTypeManual || *conf.ReplicaTimeout != 7200 || *conf.ReplicaRetryLimit != 0 ||
		*conf.ManualTriggerConfig.Parallelism != 1 || *conf.ManualTriggerConfig.ReplicaCompletionCount != 1 {
		t.Fatalf("configuration %+v", conf)
	}
	if len(conf.Registries) != 1 || *conf.Registries[0].Server != cfg.Registry || *conf.Registries[0].Identity != cfg.RegistryIdentity {
		t.Fatalf("registries %+v", conf.Registries)
	}
	if *job.Identity.Type != armappcontainers.ManagedServiceIdentityTypeUserAssigned || job.Identity.UserAssignedIdentities[cfg.RegistryIdentity] == nil {
		t.Fatalf("identity %+v", job.Identity)
	}
	want := map[string]string{"devgpu-installation": "inst-a", "devgpu-backend": "aca1", "devgpu-session": "s1", "devgpu-user": "alice@example.com", "devgpu-project": "proj"}
	for k, v := range want {
		if tag(job.Tags, k) != v {
			t.Errorf("tag %s = %q, want %q", k, tag(job.Tags, k), v)
		}
	}
	secrets := map[string]string{}
	for _, s := range conf.Secrets {
		secrets[*s.Name] = *s.Value
	}
	if secrets[secretAgent] != "agent-secret-value" || secrets[secretLink] != "link-cred-value" || secrets[secretCA] != string(cfg.LinkCA) {
		t.Fatalf("secrets %v", secrets)
	}
	ctr := p.Template.Containers[0]
	var cmd []string
	for _, s := range ctr.Command {
		cmd = append(cmd, *s)
	}
	wantCmd := []string{"/devgpu-agent", "agent", "--session", "s1", "--link", cfg.LinkURL,
		"--secret-file", "/var/run/devgpu/agent-secret", "--link-credential-file", "/var/run/devgpu/link-credential",
		"--link-ca-file", "/var/run/devgpu/link-ca", "--idle-exit", "1m0s"}
	if !slices.Equal(cmd, wantCmd) {
		t.Fatalf("command %q, want %q", cmd, wantCmd)
	}
	env := map[string]string{}
	for _, e := range ctr.Env {
		if e.SecretRef != nil {
			t.Errorf("env %s refers to a secret", *e.Name)
		}
		env[*e.Name] = *e.Value
	}
	for k, v := range map[string]string{"DEVGPU_SESSION_ID": "s1", "DEVGPU_PROJECT": "proj", "DEVGPU_USER": "alice@example.com", "DEVGPU_GPU_TYPE": "t4", "FOO": "bar", "DEVGPU_NODE": "aca/env"} {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	for k, v := range env {
		for _, secret := range []string{spec.AgentSecret, spec.LinkCredential} {
			if strings.Contains(v, secret) {
				t.Errorf("env %s holds a secret", k)
			}
		}
	}
	if _, ok := env["CUDA_VISIBLE_DEVICES"]; ok {
		t.Error("the runtime set CUDA_VISIBLE_DEVICES; the platform chooses the GPU")
	}
	for _, a := range cmd {
		if strings.Contains(a, spec.AgentSecret) || strings.Contains(a, spec.LinkCredential) {
			t.Errorf("argument %q holds a secret", a)
		}
	}
	if *ctr.Resources.CPU != 8 || *ctr.Resources.Memory != "56Gi" {
		t.Errorf("resources %v %v, want the T4 profile's whole replica", *ctr.Resources.CPU, *ctr.Resources.Memory)
	}
	if len(ctr.VolumeMounts) != 1 || *ctr.VolumeMounts[0].MountPath != secretDir || *ctr.VolumeMounts[0].VolumeName != volumeSecret {
		t.Fatalf("mounts %+v", ctr.VolumeMounts)
	}
	v := p.Template.Volumes[0]
	if *v.Name != volumeSecret || *v.StorageType != armappcontainers.StorageTypeSecret || len(v.Secrets) != 3 {
		t.Fatalf("volume %+v", v)
	}

	// Resources from the config; the user-assigned identity pulls.
	cfg.Resources = map[string]Resources{"t4": {CPU: 4, Memory: "28Gi"}}
	cfg.LinkCA = nil
	c = checkedUnit(t, cfg)
	job = c.job(spec, "img")
	ctr = job.Properties.Template.Containers[0]
	if *ctr.Resources.CPU != 4 || *ctr.Resources.Memory != "28Gi" {
		t.Errorf("resources %v %v, want aca.resources'", *ctr.Resources.CPU, *ctr.Resources.Memory)
	}
	if *job.Identity.Type != armappcontainers.ManagedServiceIdentityTypeUserAssigned || job.Identity.UserAssignedIdentities[cfg.RegistryIdentity] == nil {
		t.Errorf("identity %v %v, want UserAssigned %s", *job.Identity.Type, job.Identity.UserAssignedIdentities, cfg.RegistryIdentity)
	}
	if reg := job.Properties.Configuration.Registries[0]; *reg.Identity != cfg.RegistryIdentity {
		t.Errorf("the registry is pulled with %s, want %s", *reg.Identity, cfg.RegistryIdentity)
	}
	if len(job.Properties.Configuration.Secrets) != 2 || slices.Contains(argStrings(ctr.Command), "--link-ca-file") {
		t.Error("a link CA secret without Config.LinkCA")
	}

	// A session without a GPU runs on the Consumption profile, with its
	// replica's most.
	spec.GPU.Count = 0
	job = c.job(spec, "img")
	ctr = job.Properties.Template.Containers[0]
	if *job.Properties.WorkloadProfileName != "Consumption" || *ctr.Resources.CPU != 4 || *ctr.Resources.Memory != "8Gi" {
		t.Errorf("a session without a GPU: profile %s, resources %v %v", *job.Properties.WorkloadProfileName, *ctr.Resources.CPU, *ctr.Resources.Memory)
	}
}

func argStrings(ps []*string) []string {
	var out []string
	for _, p := range ps {
		out = append(out, *p)
	}
	return out
}

func TestCheckRequest(t *testing.T) {
	c := checkedUnit(t, unitConfig())
	for _, tc := range []struct {
		req  runtime.GPURequest
		want string
	}{
		{runtime.GPURequest{Type: "t4", Region: "swedencentral", Count: 1}, ""},
		{runtime.GPURequest{Type: "t4", Count: 1}, ""},
		{runtime.GPURequest{Type: "t4", Region: "swedencentral", Count: 2}, "cannot give a session 2 GPUs: Container Apps gives each replica one GPU; ask for 1"},
		{runtime.GPURequest{Type: "h100", Region: "swedencentral", Count: 1}, "offers no GPU of type \"h100\""},
		{runtime.GPURequest{Type: "t4", Region: "westus3", Count: 1}, "runs sessions in region swedencentral only, not westus3"},
	} {
		err := c.checkRequest(tc.req)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("checkRequest(%+v) = %v, want %q", tc.req, err, tc.want)
		}
	}
}

func TestCheckEgress(t *testing.T) {
	for _, tc := range []struct {
		env    string
		allow  []string
		policy sdk.Egress
		ok     bool
	}{
		{sdk.EgressAll, nil, sdk.Egress{}, true},
		{sdk.EgressAll, nil, sdk.Egress{Mode: sdk.EgressAll}, true},
		{sdk.EgressAll, nil, sdk.Egress{Mode: sdk.EgressNone}, false},
		{sdk.EgressAll, nil, sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"10.0.0.0/8"}}, false},
		{sdk.EgressNone, nil, sdk.Egress{Mode: sdk.EgressNone}, true},
		{sdk.EgressNone, nil, sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"10.0.0.0/8"}}, true},
		{sdk.EgressNone, nil, sdk.Egress{Mode: sdk.EgressAll}, true},
		{sdk.EgressAllowList, []string{"10.1.0.0/16", "pypi.org:443"}, sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"10.0.0.0/8", "PyPI.org"}}, true},
		{sdk.EgressAllowList, []string{"10.1.0.0/16"}, sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"10.1.2.0/24"}}, false},
		{sdk.EgressAllowList, []string{"10.1.2.3:443"}, sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"10.1.2.3:80"}}, false},
		{sdk.EgressAllowList, []string{"10.1.2.3:443"}, sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"10.1.2.3"}}, true},
		{sdk.EgressAllowList, []string{"pypi.org"}, sdk.Egress{Mode: sdk.EgressNone}, false},
	} {
		cfg := unitConfig()
		cfg.Egress, cfg.EgressAllow = tc.env, tc.allow
		c := checkedUnit(t, cfg)
		err := c.checkEgress(tc.policy)
		if (err == nil) != tc.ok {
			t.Errorf("environment %s %v, policy %+v: %v, want ok %v", tc.env, tc.allow, tc.policy, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "cannot enforce the project's egress policy \""+tc.policy.Mode+"\"") {
			t.Errorf("refusal %q does not name the policy", err)
		}
	}
}

func TestUsageFor(t *testing.T) {
	s := func(v string) *string { return &v }
	f := func(v float32) *float32 { return &v }
	usages := []*armappcontainers.Usage{
		{Name: &armappcontainers.UsageName{Value: s("ManagedEnvironmentCores"), LocalizedValue: s("Managed Environment Cores")}, Limit: f(100)},
		{Name: &armappcontainers.UsageName{Value: s("ManagedEnvironmentConsumptionT4Gpus"), LocalizedValue: s("Managed Environment Consumption T4 Gpus")}, Limit: f(3)},
		// The documented name (gpu-serverless-overview#request-serverless-gpu-quota); the value is a guess.
		{Name: &armappcontainers.UsageName{Value: s("ManagedEnvironmentConsumptionNCA100Gpus"), LocalizedValue: s("Managed Environment Consumption NCA100 Gpus")}, Limit: f(1)},
	}
	if u := usageFor(usages, "Consumption-GPU-NC8as-T4"); u == nil || *u.Limit != 3 {
		t.Errorf("T4 usage: %+v", u)
	}
	if u := usageFor(usages, "Consumption-GPU-NC24-A100"); u == nil || *u.Limit != 1 {
		t.Errorf("A100 usage: %+v", u)
	}
	if u := usageFor(usages[:1], "Consumption-GPU-NC8as-T4"); u != nil {
		t.Errorf("found %+v where there is no GPU quota", u)
	}
}

// armError is the error azcore makes of an ARM error answer.
func armError(status int, code, msg string) error {
	body := `{"error":{"code":"` + code + `","message":"` + msg + `"}}`
	resp := &http.Response{
		StatusCode: status, Status: http.StatusText(status),
		Header:  http.Header{"Content-Type": {"application/json"}},
		Body:    io.NopCloser(strings.NewReader(body)),
		Request: &http.Request{Method: http.MethodPut, URL: mustURL("https://management.azure.com/x")},
	}
	return azruntime.NewResponseError(resp)
}

func TestAzureErrors(t *testing.T) {
	r := &Runtime{cfg: checkedUnit(t, unitConfig())}
	for _, tc := range []struct {
		err  error
		want []string
	}{
		{armError(400, "ManagedEnvironmentGpuQuotaExceeded", "The requested GPUs exceed the quota Managed Environment Consumption T4 Gpus (limit 2)."),
			[]string{"Azure refused for quota", "Managed Environment Consumption T4 Gpus", "ManagedEnvironmentGpuQuotaExceeded"}},
		{armError(403, "AuthorizationFailed", "The client does not have authorization to perform action Microsoft.App/jobs/write."),
			[]string{"is not allowed", "AuthorizationFailed", "resource group rg", "Contributor"}},
		{armError(409, "Conflict", "Another operation is in progress."), []string{"conflict", "Conflict: Another operation is in progress."}},
		{armError(404, "ResourceGroupNotFound", "Resource group 'rg' could not be found."), []string{"Azure found no such resource", "ResourceGroupNotFound", "aca.resource_group"}},
		{armError(500, "InternalServerError", "boom"), []string{"Azure answered 500 (InternalServerError: boom)"}},
	} {
		err := r.azureErr("create job dg-1", tc.err)
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("azureErr = %q, want it to contain %q", err, w)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("azureErr = %q, not one line", err)
		}
		var re *azcore.ResponseError
		if !errors.As(err, &re) {
			t.Errorf("azureErr lost the ResponseError")
		}
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestExecutionLive: an execution ends a session only when it Succeeded,
// Failed or was Stopped; every other state (Running, Processing,
// Degraded, Unknown, one not read) keeps it listed.
func TestExecutionLive(t *testing.T) {
	for _, st := range []armappcontainers.JobExecutionRunningState{
		armappcontainers.JobExecutionRunningStateRunning,
		armappcontainers.JobExecutionRunningStateProcessing,
		armappcontainers.JobExecutionRunningStateDegraded,
		armappcontainers.JobExecutionRunningStateUnknown,
		"",
	} {
		if !(execution{status: st}).live() {
			t.Errorf("an execution %q does not count as live", st)
		}
	}
	for _, st := range []armappcontainers.JobExecutionRunningState{
		armappcontainers.JobExecutionRunningStateSucceeded,
		armappcontainers.JobExecutionRunningStateFailed,
		armappcontainers.JobExecutionRunningStateStopped,
	} {
		if (execution{status: st}).live() {
			t.Errorf("an execution %q counts as live", st)
		}
	}
}

// TestJWTExpiry: the ACR refresh token's exp claim says until when it is
// cached; a token that is no JWT has none.
func TestJWTExpiry(t *testing.T) {
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"exp":1900000000,"aud":"contoso.azurecr.io"}`))
	if got, ok := jwtExpiry("e30." + payload + ".sig"); !ok || !got.Equal(time.Unix(1900000000, 0)) {
		t.Errorf("jwtExpiry = %v %v, want 1900000000", got, ok)
	}
	for _, tok := range []string{"opaque", "a.b.c", "e30.e30.sig"} {
		if _, ok := jwtExpiry(tok); ok {
			t.Errorf("jwtExpiry(%q) found an expiry", tok)
		}
	}
}
