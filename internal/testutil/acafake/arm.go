//go:build linux && !agentonly

package acafake

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	armappcontainers "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/appcontainers/armappcontainers/v3"
)

// apiVersion is the api-version armappcontainers v3.1.0 sends
// (jobs_client.go: reqQP.Set("api-version", "2025-01-01")).
const apiVersion = "2025-01-01"

// pageSize is how many jobs one page of a list holds: small, so that
// callers' nextLink paging is exercised.
const pageSize = 2

// job is one Microsoft.App/jobs resource.
type job struct {
	name string
	// spec is the PUT body, secrets' values included.
	spec armappcontainers.Job
	// state is properties.provisioningState: InProgress, Succeeded,
	// Deleting.
	state string
	// busy names the operation in progress on the job ("create",
	// "delete"), "" when none.
	busy string
	// op is the job's latest create or delete operation; a GET or list
	// of the job advances it as a poll does.
	op         *operation
	executions []*execution
}

// operation is a long-running operation, polled through
// Azure-AsyncOperation (create) or Location (delete, start, stop).
type operation struct {
	id    string
	kind  string // create, delete, start, stop
	job   string
	exec  *execution
	polls int
	done  bool
	// ready reports whether the operation may end at this poll (deletes
	// and stops wait for their processes).
	ready func() bool
	// finish applies the operation's end, under f.mu; it checks fail.
	finish func()
	result any
	// fail, when set, is the injected failure (Fault.FailOperation) the
	// operation ends with instead of taking effect.
	fail *Fault
}

// armError writes ARM's error body, {"error":{"code","message"}}
// (https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/common-api-details.md#error-response-content).
func armError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("x-ms-error-code", code)
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": message}})
}

func (f *Fake) jobID(name string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.App/jobs/%s", f.opts.SubscriptionID, f.opts.ResourceGroup, name)
}

func (f *Fake) environmentID() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.App/managedEnvironments/%s", f.opts.SubscriptionID, f.opts.ResourceGroup, f.opts.Environment)
}

// serveARM routes the Microsoft.App requests armappcontainers sends
// (paths from its *_client.go files). ARM matches paths without regard
// to case.
func (f *Fake) serveARM(w http.ResponseWriter, r *http.Request) {
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	lower := make([]string, len(segs))
	for i, s := range segs {
		lower[i] = strings.ToLower(s)
	}
	key := r.Method + " " + r.URL.Path
	if len(segs) >= 4 && lower[0] == "subscriptions" && lower[2] == "resourcegroups" {
		key = r.Method + " " + "/" + strings.Join(segs[4:], "/")
	} else if len(segs) >= 2 && lower[0] == "subscriptions" {
		key = r.Method + " " + "/" + strings.Join(segs[2:], "/")
	}
	f.count(key)

	// Every ARM request carries a bearer token for ARM's audience. ARM's
	// 401 answers, as seen in the wild: no token, AuthenticationFailed
	// "Authentication failed." (MicrosoftDocs/azure-docs#103987); a token
	// it cannot validate, InvalidAuthenticationToken "The access token is
	// invalid." (Azure/azure-powershell#27882,
	// Azure/azure-sdk-for-java#1714); a token for another audience,
	// InvalidAuthenticationTokenAudience naming the allowed ones
	// (JetBrains/azure-tools-for-intellij#16).
	armAudiences := []string{armAudience, "https://management.azure.com/"}
	auth := r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	switch {
	case auth == "":
		armError(w, http.StatusUnauthorized, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
		return
	case ok && f.tokenFor(token, armAudiences...):
	case ok && f.issuedToken(token):
		armError(w, http.StatusUnauthorized, "InvalidAuthenticationTokenAudience", "The access token has been obtained for wrong audience or resource. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'.")
		return
	default:
		armError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "The access token is invalid.")
		return
	}
	f.mu.Lock()
	ft, ok := f.takeFault(r, false)
	f.mu.Unlock()
	if ok {
		// 429 comes with Retry-After, the seconds to wait
		// (https://learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling).
		if ft.Status == http.StatusTooManyRequests || ft.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(ft.RetryAfter))
		}
		msg := ft.Message
		if msg == "" {
			msg = "Injected fault " + ft.Code + "."
		}
		armError(w, ft.Status, ft.Code, msg)
		return
	}
	// ARM refuses a request without api-version with 400
	// MissingApiVersionParameter, as seen in the wild
	// (MicrosoftDocs/feedback#2279, Azure/azure-sdk-for-go#22571). One the
	// resource provider does not serve is 400 NoRegisteredProviderFound
	// naming the location, the version and the type, and listing the
	// versions it serves (Azure/azure-cli#28496); the fake serves only the
	// one armappcontainers sends, and lists only that one.
	switch v := r.URL.Query().Get("api-version"); v {
	case "":
		armError(w, http.StatusBadRequest, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
		return
	case apiVersion:
	default:
		typ := "jobs"
		for i := len(lower) - 1; i >= 0; i-- {
			if lower[i] == "managedenvironments" || lower[i] == "locations" {
				typ = segs[i]
				break
			}
		}
		armError(w, http.StatusBadRequest, "NoRegisteredProviderFound", fmt.Sprintf("No registered resource provider found for location '%s' and API version '%s' for type '%s'. The supported api-versions are '%s'.", f.opts.Location, v, typ, apiVersion))
		return
	}
	if len(segs) < 2 || lower[0] != "subscriptions" || segs[1] != f.opts.SubscriptionID {
		armError(w, http.StatusNotFound, "SubscriptionNotFound", fmt.Sprintf("The subscription '%s' could not be found.", segAt(segs, 1)))
		return
	}
	// Operation polls: /subscriptions/S/providers/Microsoft.App/locations/L/<kind>/ID.
	if len(segs) == 8 && lower[2] == "providers" && lower[3] == "microsoft.app" && lower[4] == "locations" {
		switch lower[6] {
		case "containerappsjoboperationstatuses":
			f.pollAsync(w, segs[7])
			return
		case "containerappsjoboperationresults":
			f.pollLocation(w, r, segs[7])
			return
		}
	}
	if len(segs) < 6 || lower[2] != "resourcegroups" || lower[4] != "providers" || lower[5] != "microsoft.app" {
		armError(w, http.StatusNotFound, "InvalidResourceType", "The resource type could not be found in the namespace 'Microsoft.App'.")
		return
	}
	if !strings.EqualFold(segs[3], f.opts.ResourceGroup) {
		armError(w, http.StatusNotFound, "ResourceGroupNotFound", fmt.Sprintf("Resource group '%s' could not be found.", segs[3]))
		return
	}
	rest, lrest := segs[6:], lower[6:]
	switch {
	case len(rest) == 2 && lrest[0] == "managedenvironments" && r.Method == http.MethodGet:
		f.getEnvironment(w, rest[1])
	case len(rest) == 3 && lrest[0] == "managedenvironments" && lrest[2] == "usages" && r.Method == http.MethodGet:
		f.listUsages(w, rest[1])
	case len(rest) == 1 && lrest[0] == "jobs" && r.Method == http.MethodGet:
		f.listJobs(w, r)
	case len(rest) == 2 && lrest[0] == "jobs":
		switch r.Method {
		case http.MethodPut:
			f.putJob(w, r, rest[1])
		case http.MethodGet:
			f.getJob(w, rest[1])
		case http.MethodDelete:
			f.deleteJob(w, r, rest[1])
		default:
			armError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "The method is not allowed here.")
		}
	case len(rest) == 3 && lrest[0] == "jobs" && lrest[2] == "start" && r.Method == http.MethodPost:
		f.startJob(w, r, rest[1])
	case len(rest) == 3 && lrest[0] == "jobs" && lrest[2] == "executions" && r.Method == http.MethodGet:
		f.listExecutions(w, rest[1])
	case len(rest) == 4 && lrest[0] == "jobs" && lrest[2] == "executions" && r.Method == http.MethodGet:
		f.getExecution(w, rest[1], rest[3])
	case len(rest) == 5 && lrest[0] == "jobs" && lrest[2] == "executions" && lrest[4] == "stop" && r.Method == http.MethodPost:
		f.stopExecution(w, r, rest[1], rest[3])
	default:
		armError(w, http.StatusNotFound, "InvalidResourceType", "The fake does not serve "+r.Method+" "+r.URL.Path+".")
	}
}

func segAt(segs []string, i int) string {
	if i < len(segs) {
		return segs[i]
	}
	return ""
}

// notFound is ARM's answer for a resource that does not exist
// (https://learn.microsoft.com/azure/azure-resource-manager/troubleshooting/error-not-found:
// code ResourceNotFound, "The Resource '...' under resource group '...'
// was not found.").
func (f *Fake) notFound(w http.ResponseWriter, typ, name string) {
	armError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("The Resource '%s/%s' under resource group '%s' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix", typ, name, f.opts.ResourceGroup))
}

// profiles are the environment's workload profiles, Consumption first.
func (f *Fake) profiles() []*armappcontainers.WorkloadProfile {
	out := []*armappcontainers.WorkloadProfile{{Name: to.Ptr("Consumption"), WorkloadProfileType: to.Ptr("Consumption")}}
	names := make([]string, 0, len(f.opts.Profiles))
	for n := range f.opts.Profiles {
		if n != "Consumption" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		out = append(out, &armappcontainers.WorkloadProfile{Name: to.Ptr(n), WorkloadProfileType: to.Ptr(f.opts.Profiles[n])})
	}
	return out
}

func (f *Fake) profileType(name string) (string, bool) {
	if name == "" || strings.EqualFold(name, "Consumption") {
		return "Consumption", true
	}
	for n, t := range f.opts.Profiles {
		if strings.EqualFold(n, name) {
			return t, true
		}
	}
	return "", false
}

func (f *Fake) getEnvironment(w http.ResponseWriter, name string) {
	if !strings.EqualFold(name, f.opts.Environment) {
		f.notFound(w, "Microsoft.App/managedEnvironments", name)
		return
	}
	env := armappcontainers.ManagedEnvironment{
		ID:       to.Ptr(f.environmentID()),
		Name:     to.Ptr(f.opts.Environment),
		Type:     to.Ptr("Microsoft.App/managedEnvironments"),
		Location: to.Ptr(f.opts.Location),
		Properties: &armappcontainers.ManagedEnvironmentProperties{
			ProvisioningState: to.Ptr(armappcontainers.EnvironmentProvisioningStateSucceeded),
			WorkloadProfiles:  f.profiles(),
		},
	}
	writeJSON(w, http.StatusOK, env)
}

// gpuModel is the GPU of a workload profile type ("T4" of
// "Consumption-GPU-NC8as-T4", "A100" of "Consumption-GPU-NC24-A100"),
// "" for a profile without GPUs.
func gpuModel(profileType string) string {
	u := strings.ToUpper(profileType)
	switch {
	case strings.Contains(u, "A100"):
		return "A100"
	case strings.Contains(u, "T4"):
		return "T4"
	case strings.Contains(u, "GPU"):
		return u[strings.LastIndex(u, "-")+1:]
	}
	return ""
}

// usageName is the quota usage's name for a GPU profile type. The
// serverless GPU quotas' display names are "Managed Environment
// Consumption T4 Gpus" and "Managed Environment Consumption NCA100 Gpus"
// (https://learn.microsoft.com/azure/container-apps/gpu-serverless-overview#request-serverless-gpu-quota).
// The value strings ("ManagedEnvironmentConsumptionT4Gpus",
// "ManagedEnvironmentConsumptionNCA100Gpus") are the display name without
// spaces, the pattern of the REST spec's example of the usages API
// (specification/app/resource-manager/Microsoft.App/stable/2025-01-01/
// examples/ManagedEnvironmentUsages_List.json:
// "ManagedEnvironmentConsumptionCores", "Managed Environment Consumption
// Cores"), and were NOT confirmed; nor were the names for other GPUs or
// for dedicated profiles, which follow the same pattern.
func usageName(profileType string) (value, localized string) {
	plan := "Consumption"
	if !strings.HasPrefix(strings.ToLower(profileType), "consumption") {
		plan = "Dedicated"
	}
	m := gpuModel(profileType)
	if m == "A100" {
		m = "NCA100"
	}
	return "ManagedEnvironment" + plan + m + "Gpus", "Managed Environment " + plan + " " + m + " Gpus"
}

// gpusInUse counts the running executions on profiles of profileType,
// under f.mu.
func (f *Fake) gpusInUse(profileType string) int {
	n := 0
	for _, j := range f.jobs {
		t, _ := f.profileType(str(j.spec.Properties.WorkloadProfileName))
		if t != profileType {
			continue
		}
		for _, e := range j.executions {
			if e.running() {
				n++
			}
		}
	}
	return n
}

// listUsages answers the environment's quota usages
// (ManagedEnvironmentUsagesClient.NewListPager: GET
// .../managedEnvironments/{env}/usages, a ListUsagesResult): the
// consumption cores, then one per GPU profile type in GPUQuota.
func (f *Fake) listUsages(w http.ResponseWriter, name string) {
	if !strings.EqualFold(name, f.opts.Environment) {
		f.notFound(w, "Microsoft.App/managedEnvironments", name)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	res := armappcontainers.ListUsagesResult{Value: []*armappcontainers.Usage{{
		Name:         &armappcontainers.UsageName{Value: to.Ptr("ManagedEnvironmentConsumptionCores"), LocalizedValue: to.Ptr("Managed Environment Consumption Cores")},
		CurrentValue: to.Ptr[float32](0),
		Limit:        to.Ptr[float32](100),
		Unit:         to.Ptr("Count"),
	}}}
	types := make([]string, 0, len(f.opts.GPUQuota))
	for t := range f.opts.GPUQuota {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		v, l := usageName(t)
		res.Value = append(res.Value, &armappcontainers.Usage{
			Name:         &armappcontainers.UsageName{Value: to.Ptr(v), LocalizedValue: to.Ptr(l)},
			CurrentValue: to.Ptr(float32(f.gpusInUse(t))),
			Limit:        to.Ptr(float32(f.opts.GPUQuota[t])),
			Unit:         to.Ptr("Count"),
		})
	}
	writeJSON(w, http.StatusOK, res)
}

// jobNameRE is Container Apps' rule for job names: lower case letters,
// digits and '-', starting with a letter, ending with a letter or digit,
// 2 to 32 characters; and no "--" (checked beside it). A name that breaks
// it is 400 ContainerAppInvalidName with the sentence of
// invalidJobName (DefangLabs/pulumi-defang#543 quotes Azure's answer).
var jobNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}[a-z0-9]$`)

func invalidJobName(name string) string {
	return fmt.Sprintf("Invalid ContainerAppsJob name '%s'. A name must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character and cannot have '--'. The length must be between 2 and 32 characters inclusive.", name)
}

func badRequest(w http.ResponseWriter, format string, args ...any) {
	armError(w, http.StatusBadRequest, "InvalidParameter", fmt.Sprintf(format, args...))
}

// validate checks a job's PUT body as Container Apps does where the fake
// knows how; the first problem is returned as a sentence.
func (f *Fake) validate(name string, j *armappcontainers.Job) string {
	if str(j.Location) == "" {
		return "The location property is required."
	}
	if !strings.EqualFold(strings.ReplaceAll(str(j.Location), " ", ""), f.opts.Location) {
		return fmt.Sprintf("The job's location '%s' is not its environment's location '%s'.", str(j.Location), f.opts.Location)
	}
	p := j.Properties
	if p == nil {
		return "The properties of the job are required."
	}
	if !strings.EqualFold(str(p.EnvironmentID), f.environmentID()) {
		return fmt.Sprintf("The environmentId '%s' is not a managed environment in this resource group (the fake serves %s).", str(p.EnvironmentID), f.environmentID())
	}
	if _, ok := f.profileType(str(p.WorkloadProfileName)); !ok {
		return fmt.Sprintf("The workload profile '%s' does not exist in environment '%s'.", str(p.WorkloadProfileName), f.opts.Environment)
	}
	c := p.Configuration
	if c == nil {
		return "The configuration of the job is required."
	}
	// JobConfiguration's required properties are replicaTimeout and
	// triggerType (the REST spec's Jobs.json, JobConfiguration.required).
	if c.TriggerType == nil {
		return "The configuration's triggerType is required."
	}
	if *c.TriggerType != armappcontainers.TriggerTypeManual {
		return fmt.Sprintf("The fake serves Manual jobs only, not triggerType %s.", *c.TriggerType)
	}
	if c.ReplicaTimeout == nil || *c.ReplicaTimeout <= 0 {
		return "The configuration's replicaTimeout is required and must be positive."
	}
	// A registry pulled with a managed identity needs that identity on
	// the job: "system" the system-assigned one, a resource id a
	// user-assigned one the job lists
	// (https://learn.microsoft.com/azure/container-apps/managed-identity-image-pull).
	for _, reg := range c.Registries {
		id := str(reg.Identity)
		if id == "" {
			continue
		}
		var typ string
		if j.Identity != nil && j.Identity.Type != nil {
			typ = string(*j.Identity.Type)
		}
		if strings.EqualFold(id, "system") {
			if !strings.Contains(typ, "SystemAssigned") {
				return fmt.Sprintf("Registry '%s' is pulled with the system-assigned identity, but the job has none (identity.type is '%s').", str(reg.Server), typ)
			}
			continue
		}
		found := false
		if j.Identity != nil {
			for k := range j.Identity.UserAssignedIdentities {
				found = found || strings.EqualFold(k, id)
			}
		}
		if !found {
			return fmt.Sprintf("Registry '%s' is pulled with the user-assigned identity '%s', which is not among the job's identity.userAssignedIdentities.", str(reg.Server), id)
		}
	}
	secrets := map[string]bool{}
	for _, s := range c.Secrets {
		n := str(s.Name)
		if n == "" || secrets[n] {
			return fmt.Sprintf("Secret names must be unique and not empty ('%s').", n)
		}
		if s.Value == nil && s.KeyVaultURL == nil {
			return fmt.Sprintf("Secret '%s' needs a value.", n)
		}
		secrets[n] = true
	}
	t := p.Template
	if t == nil || len(t.Containers) == 0 {
		return "The template needs at least one container."
	}
	volumes := map[string]bool{}
	for _, v := range t.Volumes {
		volumes[str(v.Name)] = true
		if v.StorageType != nil && *v.StorageType == armappcontainers.StorageTypeSecret {
			for _, item := range v.Secrets {
				if !secrets[str(item.SecretRef)] {
					return fmt.Sprintf("Volume '%s' references secret '%s', which the job does not define.", str(v.Name), str(item.SecretRef))
				}
			}
		}
	}
	for _, ct := range t.Containers {
		if str(ct.Name) == "" || str(ct.Image) == "" {
			return "Every container needs a name and an image."
		}
		if len(ct.Command) == 0 {
			return fmt.Sprintf("Container '%s' needs a command (the fake runs the command's file from the image; it has no entrypoint to fall back on).", str(ct.Name))
		}
		for _, e := range ct.Env {
			if e.SecretRef != nil && !secrets[*e.SecretRef] {
				return fmt.Sprintf("Environment variable '%s' references secret '%s', which the job does not define.", str(e.Name), *e.SecretRef)
			}
		}
		for _, m := range ct.VolumeMounts {
			if !volumes[str(m.VolumeName)] {
				return fmt.Sprintf("Volume mount '%s' of container '%s' names no volume of the template.", str(m.VolumeName), str(ct.Name))
			}
		}
	}
	return ""
}

// view is the job as GET shows it: secrets without their values (the
// REST spec's CommonDefinitions.json marks Secret.value "x-ms-secret":
// true, which ARM never returns; the values come only from
// Jobs_ListSecrets), its id, name, type and provisioningState.
func (f *Fake) view(j *job) armappcontainers.Job {
	var out armappcontainers.Job
	b, _ := json.Marshal(j.spec)
	_ = json.Unmarshal(b, &out)
	out.ID = to.Ptr(f.jobID(j.name))
	out.Name = to.Ptr(j.name)
	out.Type = to.Ptr("Microsoft.App/jobs")
	if out.Properties == nil {
		out.Properties = &armappcontainers.JobProperties{}
	}
	out.Properties.ProvisioningState = to.Ptr(armappcontainers.JobProvisioningState(j.state))
	if out.Properties.Configuration != nil {
		for _, s := range out.Properties.Configuration.Secrets {
			s.Value = nil
		}
	}
	return out
}

func (f *Fake) opURL(kind, id string) string {
	return fmt.Sprintf("%s/subscriptions/%s/providers/Microsoft.App/locations/%s/%s/%s?api-version=%s", f.ARMEndpoint(), f.opts.SubscriptionID, f.opts.Location, kind, id, apiVersion)
}

// conflict is the answer to a request on a job that has an operation in
// progress: 409 ContainerAppsJobOperationInProgress naming the job and
// the operation (the sentence Azure answers, quoted in
// hashicorp/terraform-provider-azurerm#31796). Under f.mu.
func conflict(w http.ResponseWriter, j *job) {
	id := ""
	if j.op != nil {
		id = j.op.id
	}
	armError(w, http.StatusConflict, "ContainerAppsJobOperationInProgress", fmt.Sprintf("Cannot modify a container apps job '%s' because there is an active provisioning operation in progress. OperationId: '%s'.", j.name, id))
}

// advanceJob advances the job's create or delete as a poll of it would:
// ARM's clients may follow an operation by reading the resource's
// provisioningState instead of polling the operation
// (async-api-reference.md, "ProvisioningState property"), so a job whose
// creator never polled (a control plane restarted between the PUT and
// its polls) still gets to Succeeded. It reports whether the job is
// still there. Under f.mu.
func (f *Fake) advanceJob(key string) bool {
	j := f.jobs[key]
	if j == nil {
		return false
	}
	if j.op != nil && !j.op.done {
		j.op.advance()
	}
	return f.jobs[key] == j
}

// putJob creates or updates a job: 201 (200 for an update) with
// provisioningState InProgress and an Azure-AsyncOperation header, as
// ARM's asynchronous PUT does
// (https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/async-api-reference.md#creatingupdating-using-put);
// armappcontainers polls it with FinalStateViaAzureAsyncOp and then GETs
// the job. A PUT while another operation on the job runs is 409 (see
// conflict). A create whose operation fails (Fault.FailOperation) leaves
// the job with provisioningState Failed.
func (f *Fake) putJob(w http.ResponseWriter, r *http.Request, name string) {
	// The name is checked first, with a code of its own.
	if !jobNameRE.MatchString(name) || strings.Contains(name, "--") {
		armError(w, http.StatusBadRequest, "ContainerAppInvalidName", invalidJobName(name))
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		badRequest(w, "The request body could not be read.")
		return
	}
	var spec armappcontainers.Job
	if err := json.Unmarshal(body, &spec); err != nil {
		armError(w, http.StatusBadRequest, "InvalidRequestContent", "The request content was invalid and could not be deserialized: "+err.Error())
		return
	}
	if msg := f.validate(name, &spec); msg != "" {
		badRequest(w, "%s", msg)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	key := strings.ToLower(name)
	j := f.jobs[key]
	status := http.StatusCreated
	if j != nil {
		if j.busy != "" {
			conflict(w, j)
			return
		}
		status = http.StatusOK
		j.spec = spec
	} else {
		j = &job{name: name, spec: spec}
		f.jobs[key] = j
	}
	j.state = string(armappcontainers.JobProvisioningStateInProgress)
	j.busy = "create"
	op := &operation{id: randomHex(16), kind: "create", job: key, ready: func() bool { return true }}
	if ft, ok := f.takeFault(r, true); ok {
		op.fail = &ft
	}
	op.finish = func() {
		j.state = string(armappcontainers.JobProvisioningStateSucceeded)
		if op.fail != nil {
			j.state = string(armappcontainers.JobProvisioningStateFailed)
		}
		j.busy = ""
	}
	f.ops[op.id] = op
	j.op = op
	f.log.Info("acafake: job put", "job", name, "status", status)
	w.Header().Set("Azure-AsyncOperation", f.opURL("containerappsjobOperationStatuses", op.id))
	writeJSON(w, status, f.view(j))
}

// getJob answers the job; reading it advances its create or delete as a
// poll would (advanceJob).
func (f *Fake) getJob(w http.ResponseWriter, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := strings.ToLower(name)
	if !f.advanceJob(key) {
		f.notFound(w, "Microsoft.App/jobs", name)
		return
	}
	writeJSON(w, http.StatusOK, f.view(f.jobs[key]))
}

// listJobs answers a JobsCollection of pageSize jobs with a nextLink to
// the rest, as ARM pages lists
// (https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/resource-api-reference.md#get-resource:
// "nextLink"). Listing advances each job's create or delete as GET does.
func (f *Fake) listJobs(w http.ResponseWriter, r *http.Request) {
	skip, _ := strconv.Atoi(r.URL.Query().Get("$skiptoken"))
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.jobs))
	for k := range f.jobs {
		names = append(names, k)
	}
	sort.Strings(names)
	res := armappcontainers.JobsCollection{Value: []*armappcontainers.Job{}}
	for i := skip; i < len(names) && i < skip+pageSize; i++ {
		// A job whose delete ends now leaves a page one short: the
		// skiptoken counts the jobs as they were.
		if !f.advanceJob(names[i]) {
			continue
		}
		v := f.view(f.jobs[names[i]])
		res.Value = append(res.Value, &v)
	}
	if skip+pageSize < len(names) {
		res.NextLink = to.Ptr(fmt.Sprintf("%s/subscriptions/%s/resourceGroups/%s/providers/Microsoft.App/jobs?api-version=%s&$skiptoken=%d", f.ARMEndpoint(), f.opts.SubscriptionID, f.opts.ResourceGroup, apiVersion, skip+pageSize))
	}
	writeJSON(w, http.StatusOK, res)
}

// goTerminate stops e in a goroutine that Close waits for; after Close
// began, Close's own terminate does it. Under f.mu.
func (f *Fake) goTerminate(e *execution) {
	if f.closed {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		e.terminate()
	}()
}

// deleteJob deletes a job: 202 with Location, whose polls answer 202
// until the job and its executions' processes are gone, then 204
// (async-api-reference.md#delete-resource-asynchronously); a job that
// does not exist is 204 at once (the REST spec's Jobs.json, Jobs_Delete:
// "204": "Container Apps Job does not exist."). Its running executions
// are stopped as the platform does when it deletes a job. A delete whose
// operation fails (Fault.FailOperation) stops nothing and leaves the job,
// with provisioningState Failed (that state after a failed delete is the
// fake's choice, NOT confirmed).
func (f *Fake) deleteJob(w http.ResponseWriter, r *http.Request, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := strings.ToLower(name)
	j := f.jobs[key]
	if j == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if j.busy == "create" {
		conflict(w, j)
		return
	}
	// A second delete while one runs starts another operation on the same
	// end.
	j.busy = "delete"
	j.state = string(armappcontainers.JobProvisioningStateDeleting)
	op := &operation{id: randomHex(16), kind: "delete", job: key}
	if ft, ok := f.takeFault(r, true); ok {
		op.fail = &ft
	}
	var execs []*execution
	if op.fail == nil {
		execs = append(execs, j.executions...)
	}
	op.ready = func() bool {
		for _, e := range execs {
			if !e.ended() {
				return false
			}
		}
		return true
	}
	op.finish = func() {
		if op.fail != nil {
			j.state = string(armappcontainers.JobProvisioningStateFailed)
			j.busy = ""
			return
		}
		if f.jobs[key] == j {
			delete(f.jobs, key)
		}
	}
	f.ops[op.id] = op
	j.op = op
	for _, e := range execs {
		f.goTerminate(e)
	}
	f.log.Info("acafake: job delete", "job", name)
	w.Header().Set("Location", f.opURL("containerappsjobOperationResults", op.id))
	w.WriteHeader(http.StatusAccepted)
}

// startJob starts one execution of a job: 202 with Location and no body;
// the JobExecutionBase {name, id} is the final poll's 200
// (async-api-reference.md, "202 Accepted and Location Headers";
// jobs_client.go BeginStart: FinalStateViaLocation). A start while the
// job is being created or deleted is 409 (see conflict). Starting beyond
// the environment's GPU quota fails with the quota's name and limit: the
// fake checks quota at start, because an execution's replica is what
// takes a GPU (a job definition takes none); which call Azure refuses,
// and with which code, was NOT confirmed: "QuotaExceeded" with 400 is the
// fake's choice. A start whose operation fails (Fault.FailOperation)
// makes no execution.
//
// The start's body, a JobExecutionTemplate that overrides the job's
// containers for this execution (Jobs.json, Jobs_Start), is not applied:
// one with containers or init containers is refused with 400
// InvalidParameter, as the fake's own choice; the aca runtime sends none.
func (f *Fake) startJob(w http.ResponseWriter, r *http.Request, name string) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		badRequest(w, "The request body could not be read.")
		return
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		var tmpl armappcontainers.JobExecutionTemplate
		if err := json.Unmarshal(body, &tmpl); err != nil {
			armError(w, http.StatusBadRequest, "InvalidRequestContent", "The request content was invalid and could not be deserialized: "+err.Error())
			return
		}
		if len(tmpl.Containers) > 0 || len(tmpl.InitContainers) > 0 {
			badRequest(w, "The fake does not apply a start's template (containers for this execution only); start job '%s' without one.", name)
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	key := strings.ToLower(name)
	j := f.jobs[key]
	if j == nil {
		f.notFound(w, "Microsoft.App/jobs", name)
		return
	}
	if j.busy != "" {
		conflict(w, j)
		return
	}
	if f.closed {
		armError(w, http.StatusServiceUnavailable, "ServiceUnavailable", "The fake is closing.")
		return
	}
	ptype, _ := f.profileType(str(j.spec.Properties.WorkloadProfileName))
	if limit, ok := f.opts.GPUQuota[ptype]; ok {
		if used := f.gpusInUse(ptype); used+1 > limit {
			_, localized := usageName(ptype)
			armError(w, http.StatusBadRequest, "QuotaExceeded", fmt.Sprintf("Operation would exceed quota '%s' of environment '%s': limit %d, current usage %d, requested 1. Stop a running execution or request a quota increase.", localized, f.opts.Environment, limit, used))
			return
		}
	}
	op := &operation{id: randomHex(16), kind: "start", job: key, ready: func() bool { return true }, finish: func() {}}
	if ft, ok := f.takeFault(r, true); ok {
		op.fail = &ft
	} else {
		e := f.newExecution(j, ptype)
		op.exec = e
		op.result = armappcontainers.JobExecutionBase{Name: to.Ptr(e.name), ID: to.Ptr(e.id)}
		f.wg.Add(1)
		go e.launch()
	}
	f.ops[op.id] = op
	w.Header().Set("Location", f.opURL("containerappsjobOperationResults", op.id))
	w.WriteHeader(http.StatusAccepted)
}

func (f *Fake) executionJSON(e *execution) armappcontainers.JobExecution {
	x := armappcontainers.JobExecution{
		ID:   to.Ptr(e.id),
		Name: to.Ptr(e.name),
		Type: to.Ptr("Microsoft.App/jobs/executions"),
		Properties: &armappcontainers.JobExecutionProperties{
			Status:    to.Ptr(armappcontainers.JobExecutionRunningState(e.status)),
			StartTime: to.Ptr(e.start),
			Template:  &armappcontainers.JobExecutionTemplate{Containers: []*armappcontainers.JobExecutionContainer{e.container}},
		},
	}
	if !e.end.IsZero() {
		x.Properties.EndTime = to.Ptr(e.end)
	}
	return x
}

// listExecutions answers the job's executions, newest first
// (jobsexecutions_client.go: GET .../jobs/{job}/executions,
// ContainerAppJobExecutions).
func (f *Fake) listExecutions(w http.ResponseWriter, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.jobs[strings.ToLower(name)]
	if j == nil {
		f.notFound(w, "Microsoft.App/jobs", name)
		return
	}
	res := armappcontainers.ContainerAppJobExecutions{Value: []*armappcontainers.JobExecution{}}
	for i := len(j.executions) - 1; i >= 0; i-- {
		x := f.executionJSON(j.executions[i])
		res.Value = append(res.Value, &x)
	}
	writeJSON(w, http.StatusOK, res)
}

func (f *Fake) findExecution(w http.ResponseWriter, name, exec string) (*job, *execution) {
	j := f.jobs[strings.ToLower(name)]
	if j == nil {
		f.notFound(w, "Microsoft.App/jobs", name)
		return nil, nil
	}
	for _, e := range j.executions {
		if strings.EqualFold(e.name, exec) {
			return j, e
		}
	}
	f.notFound(w, "Microsoft.App/jobs/"+name+"/executions", exec)
	return nil, nil
}

// getExecution answers one execution (containerappsapi_client.go
// JobExecution: GET .../jobs/{job}/executions/{name}).
func (f *Fake) getExecution(w http.ResponseWriter, name, exec string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, e := f.findExecution(w, name, exec); e != nil {
		writeJSON(w, http.StatusOK, f.executionJSON(e))
	}
}

// stopExecution stops an execution (jobs_client.go BeginStopExecution:
// POST .../executions/{name}/stop, 202 with Location); the operation ends
// when the process has: the execution is then Stopped (one that had
// already ended keeps its status). A stop whose operation fails
// (Fault.FailOperation) stops nothing.
func (f *Fake) stopExecution(w http.ResponseWriter, r *http.Request, name, exec string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, e := f.findExecution(w, name, exec)
	if e == nil {
		return
	}
	op := &operation{id: randomHex(16), kind: "stop", job: strings.ToLower(j.name), exec: e, ready: e.ended, finish: func() {}}
	if ft, ok := f.takeFault(r, true); ok {
		op.fail = &ft
		op.ready = func() bool { return true }
	} else {
		f.goTerminate(e)
	}
	f.ops[op.id] = op
	w.Header().Set("Location", f.opURL("containerappsjobOperationResults", op.id))
	w.WriteHeader(http.StatusAccepted)
}

// advance counts a poll of op and reports whether op has ended: an
// operation ends at its second poll at the earliest, and when ready.
// Called with f.mu held.
func (op *operation) advance() bool {
	if op.done {
		return true
	}
	op.polls++
	if op.polls >= 2 && (op.ready == nil || op.ready()) {
		op.done = true
		op.finish()
	}
	return op.done
}

// failure is the error object of a failed operation.
func (op *operation) failure() map[string]string {
	msg := op.fail.Message
	if msg == "" {
		msg = "Injected failure " + op.fail.Code + " of the " + op.kind + " operation."
	}
	return map[string]string{"code": op.fail.Code, "message": msg}
}

// pollAsync answers GET on an Azure-AsyncOperation URL: {"status":
// "InProgress"} until the operation ends, then "Succeeded", or "Failed"
// with an error object
// (async-api-reference.md#azure-asyncoperation-resource-format).
func (f *Fake) pollAsync(w http.ResponseWriter, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := f.ops[id]
	if op == nil {
		armError(w, http.StatusNotFound, "OperationNotFound", "The operation "+id+" was not found.")
		return
	}
	body := map[string]any{
		"id":        strings.TrimPrefix(f.opURL("containerappsjobOperationStatuses", id), f.ARMEndpoint()),
		"name":      id,
		"status":    "InProgress",
		"startTime": time.Now().UTC().Format(time.RFC3339),
	}
	if op.advance() {
		body["status"] = "Succeeded"
		if op.fail != nil {
			body["status"] = "Failed"
			body["error"] = op.failure()
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// pollLocation answers GET on a Location URL: 202 with the same Location
// until the operation ends, then 204 for a delete and 200 with the result
// for the others; a failed operation answers its error status with
// {"status":"Failed","error":{...}}
// (async-api-reference.md#202-accepted-and-location-headers).
func (f *Fake) pollLocation(w http.ResponseWriter, r *http.Request, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := f.ops[id]
	if op == nil {
		armError(w, http.StatusNotFound, "OperationNotFound", "The operation "+id+" was not found.")
		return
	}
	if !op.advance() {
		w.Header().Set("Location", f.opURL("containerappsjobOperationResults", id))
		w.WriteHeader(http.StatusAccepted)
		return
	}
	switch {
	case op.fail != nil:
		status := op.fail.Status
		if status == 0 {
			status = http.StatusBadRequest
		}
		w.Header().Set("x-ms-error-code", op.fail.Code)
		writeJSON(w, status, map[string]any{"status": "Failed", "error": op.failure()})
	case op.kind == "delete":
		w.WriteHeader(http.StatusNoContent)
	case op.result != nil:
		writeJSON(w, http.StatusOK, op.result)
	default:
		w.WriteHeader(http.StatusOK)
	}
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
