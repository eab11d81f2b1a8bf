//go:build linux && !agentonly

package aca

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azruntime "github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/devgpu/devgpu/internal/runtime"
)

// azureError is an Azure refusal said in one sentence, keeping the
// *azcore.ResponseError (its status and ARM code) for errors.As.
type azureError struct {
	msg string
	err *azcore.ResponseError
}

func (e *azureError) Error() string { return e.msg }
func (e *azureError) Unwrap() error { return e.err }

// armMessage is the message of an ARM error body
// ({"error":{"code","message"}}: the ARM RPC's error response,
// https://github.com/cloud-and-ai-microsoft/resource-provider-contract/blob/master/v1.0/common-api-details.md#error-response-content),
// on one line. azcore keeps the raw response; its Error() is many lines.
func armMessage(re *azcore.ResponseError) string {
	msg := ""
	if re.RawResponse != nil {
		// Payload caches the body azcore read for the error.
		if b, err := azruntime.Payload(re.RawResponse); err == nil {
			var body struct {
				Error struct {
					Code    string `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if json.Unmarshal(b, &body) == nil {
				msg = body.Error.Message
			}
		}
	}
	return strings.Join(strings.Fields(msg), " ")
}

// isQuota reports whether an ARM error looks like a quota refusal. This is
// a heuristic, not a documented contract: the quotas page
// (https://learn.microsoft.com/azure/container-apps/quotas) shows a
// refusal worded "Maximum Allowed Cores exceeded for the Managed
// Environment", and quota names contain "quota" or the quota's name; the
// code and wording of a GPU quota refusal were not confirmed, so both the
// code and the message are looked at.
func isQuota(code, msg string) bool {
	l := strings.ToLower(code + " " + msg)
	return strings.Contains(l, "quota") || strings.Contains(l, "maximum allowed") && strings.Contains(l, "exceeded")
}

// azureErr turns err from an ARM call into one sentence: what failed
// (doing, such as "create job dg-1 for session s1"), why, and the fix. A
// quota refusal names the quota; 403 the role to assign; 404 and 409 say
// what they mean here. Other errors are wrapped as they are.
//
// 409: ARM's resource provider contract answers 409 Conflict to a request
// that conflicts with the resource's state, such as an operation while
// another is in progress
// (https://github.com/cloud-and-ai-microsoft/resource-provider-contract/blob/master/v1.0/async-api-reference.md);
// what Container Apps answers with 409 was not confirmed, so the sentence
// says what it most likely means. The roles: Contributor, and Managed
// Identity Operator ("Read and Assign User Assigned Identity"), which
// assigning a user-assigned identity to a job needs
// (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles#managed-identity-operator;
// not confirmed against a stored copy of that page).
func (r *Runtime) azureErr(doing string, err error) error {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return fmt.Errorf("aca backend %s: %s: %w", r.cfg.Backend, doing, err)
	}
	b := "aca backend " + r.cfg.Backend
	code := re.ErrorCode
	msg := armMessage(re)
	detail := code
	if msg != "" {
		detail = code + ": " + msg
	}
	var s string
	switch {
	case isQuota(code, msg):
		s = fmt.Sprintf("%s: %s: Azure refused for quota (%s); free some of it, ask Azure for more (the environment's Quota page, or az containerapp env list-usages shows it), or lower aca.quota", b, doing, detail)
	case re.StatusCode == http.StatusForbidden || code == "AuthorizationFailed" || code == "LinkedAuthorizationFailed":
		s = fmt.Sprintf("%s: %s: the control plane's Azure identity is not allowed (%s); assign it Contributor (or a role with Microsoft.App/jobs/* and Microsoft.App/managedEnvironments/join/action) on resource group %s, and Managed Identity Operator on the registry identity", b, doing, detail, r.cfg.ResourceGroup)
	case re.StatusCode == http.StatusUnauthorized:
		s = fmt.Sprintf("%s: %s: Azure did not accept the control plane's credential (%s); check aca.credential", b, doing, detail)
	case re.StatusCode == http.StatusNotFound:
		s = fmt.Sprintf("%s: %s: Azure found no such resource (%s); check aca.subscription_id, aca.resource_group and aca.environment", b, doing, detail)
	case re.StatusCode == http.StatusConflict:
		s = fmt.Sprintf("%s: %s: Azure reports a conflict (%s), most likely another operation on it in progress; try again when it ends", b, doing, detail)
	case re.StatusCode == http.StatusTooManyRequests:
		s = fmt.Sprintf("%s: %s: Azure throttled the request and retries did not get through (%s); try again later", b, doing, detail)
	default:
		s = fmt.Sprintf("%s: %s: Azure answered %d (%s)", b, doing, re.StatusCode, detail)
	}
	ae := &azureError{msg: s, err: re}
	if isQuota(code, msg) {
		// The user may read why: the quota's name and numbers, not the
		// backend's resource ids.
		return &runtime.RefusedError{Err: ae, Message: fmt.Sprintf("Azure's GPU quota is used up (%s); wait for a session to end, or ask an administrator to raise the quota", truncate(msg, 300))}
	}
	return ae
}

// forbidden reports whether err is ARM's 403.
func forbidden(err error) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusForbidden
}

// notFound reports whether err is ARM's 404.
func notFound(err error) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound
}

// truncate cuts s to at most n bytes, on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
