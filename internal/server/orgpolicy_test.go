package server

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

// TestOrgPolicyCompareAndSet: a PUT with the version an admin read is
// refused (412) once another admin's change came between, and changes
// nothing; with the current version it is taken.
func TestOrgPolicyCompareAndSet(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	put := func(p sdk.OrgPolicy, version string) (int, string) {
		b, _ := json.Marshal(p)
		req, _ := http.NewRequest("PUT", f.url+"/api/v1/org/policy", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+f.admin)
		if version != "" {
			req.Header.Set("If-Match", version)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("ETag")
	}
	c, err := sdk.NewClient(f.url, f.admin)
	if err != nil {
		t.Fatal(err)
	}
	read, v1, err := c.OrgPolicyVersion(t.Context())
	if err != nil || v1 == "" {
		t.Fatalf("read the policy: %q %v", v1, err)
	}
	// Another admin changes it.
	theirs := read
	theirs.Registries = []string{"ghcr.io"}
	code, v2 := put(theirs, v1)
	if code != http.StatusOK || v2 == "" || v2 == v1 {
		t.Fatalf("first write with the version read: %d, version %q after %q", code, v2, v1)
	}
	// The first admin's write from the stale read is refused.
	mine := read
	mine.Quotas = []sdk.Quota{{GPUType: "t4", Max: 1}}
	if code, _ := put(mine, v1); code != http.StatusPreconditionFailed {
		t.Fatalf("a write from a stale read: %d, want 412", code)
	}
	if _, _, err := c.SetOrgPolicyIf(t.Context(), mine, v1); err == nil || !sdk.IsStatus(err, http.StatusPreconditionFailed) {
		t.Fatalf("SetOrgPolicyIf from a stale read: %v", err)
	}
	got, v, err := c.OrgPolicyVersion(t.Context())
	if err != nil || v != v2 || len(got.Quotas) != 0 || len(got.Registries) != 1 {
		t.Fatalf("after the refused write: %+v version %q (want %q), %v", got, v, v2, err)
	}
	// UpdateOrgPolicy makes its change to what is there now.
	got, err = c.UpdateOrgPolicy(t.Context(), func(p sdk.OrgPolicy) (sdk.OrgPolicy, error) {
		p.Quotas = []sdk.Quota{{GPUType: "t4", Max: 1}}
		return p, nil
	})
	if err != nil || len(got.Quotas) != 1 || len(got.Registries) != 1 {
		t.Fatalf("update: %+v %v", got, err)
	}
	if code, _ := put(sdk.OrgPolicy{}, `"nope"`); code != http.StatusPreconditionFailed {
		t.Fatalf("a write with an unknown version: %d, want 412", code)
	}
	if code, _ := put(got, "*"); code != http.StatusOK {
		t.Fatalf("a write with If-Match *: %d", code)
	}
}
