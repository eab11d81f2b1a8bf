package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// The organisation policy is changed by compare-and-set, so that two
// admins never overwrite each other: GET returns it with an ETag, its
// version, and a PUT that sends that version in If-Match replaces it only
// if it is still that version, else answers 412 Precondition Failed; the
// client then reads it again and makes its change to what it finds
// (sdk.Client.UpdateOrgPolicy, `devgpu admin org update`). A PUT without
// If-Match replaces whatever is there.

// orgETag is the version of a policy: a hash of it as the API writes it,
// so that equal policies have equal versions and nothing else does.
func orgETag(org sdk.OrgPolicy) string {
	b, _ := json.Marshal(org) // a plain struct: never fails
	sum := sha256.Sum256(b)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}

// ifMatch reports whether an If-Match header (a list of entity tags, or
// *) admits the version etag.
func ifMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(t), "W/"))
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

var errOrgPolicyChanged = httpapi.Errorf(http.StatusPreconditionFailed,
	"the organisation policy changed since it was read; read it again and make the change to the new policy (`devgpu admin org update` does this by itself)")

var errRequireSSOLockout = httpapi.Errorf(http.StatusConflict,
	"turning on require_sso would refuse your own API token; log in with `devgpu login URL` (single sign-on) first, or mark your user as a service account")

func (a *API) getOrgPolicy(w http.ResponseWriter, r *http.Request, caller store.User) error {
	org, err := a.s.store.OrgPolicy(r.Context())
	if err != nil {
		return err
	}
	w.Header().Set("ETag", orgETag(org))
	httpapi.Write(w, http.StatusOK, org)
	return nil
}

// putOrgPolicy replaces the organisation policy, with If-Match only if it
// is still the version the client read. Lowering a quota never ends
// running sessions; it only holds new ones back.
func (a *API) putOrgPolicy(w http.ResponseWriter, r *http.Request, caller store.User) error {
	if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can change the organisation policy", nil); err != nil {
		return err
	}
	var org sdk.OrgPolicy
	if err := httpapi.Read(w, r, &org); err != nil {
		return err
	}
	if err := policy.ValidateOrg(org); err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "%v", err)
	}
	if org.RequireSSO && a.s.sso == nil {
		return httpapi.Errorf(http.StatusBadRequest, "single sign-on cannot be required: this server has no identity provider configured (oidc in the server config)")
	}
	match := r.Header.Get("If-Match")
	var stored sdk.OrgPolicy
	// The check and the write are one transaction, which serialises with
	// every other: no change can come between them.
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		before, err := tx.OrgPolicy(r.Context())
		if err != nil {
			return err
		}
		if match != "" && !ifMatch(match, orgETag(before)) {
			return errOrgPolicyChanged
		}
		if org.RequireSSO && !before.RequireSSO && callerToken(r).Method == store.TokenMethodAPI && !caller.ServiceAccount {
			// The caller would lock themselves out with this very request.
			return errRequireSSOLockout
		}
		if err := tx.SetOrgPolicy(r.Context(), org); err != nil {
			return err
		}
		if stored, err = tx.OrgPolicy(r.Context()); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "org.policy", "", "org", before, org)
	})
	if err != nil {
		return err
	}
	a.s.policyChanged(r.Context())
	a.s.requireSSO.Store(stored.RequireSSO)
	w.Header().Set("ETag", orgETag(stored))
	httpapi.Write(w, http.StatusOK, stored)
	return nil
}
