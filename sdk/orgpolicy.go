package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// The organisation policy is changed by compare-and-set: OrgPolicyVersion
// returns it with its version (the ETag), and SetOrgPolicyIf replaces it
// only if it is still that version. UpdateOrgPolicy does both, again on a
// fresh read when another change came between, so that two admins
// changing different parts at once both keep their change.

// ErrOrgPolicyChanged is SetOrgPolicyIf's error when the policy is no
// longer the version given.
var ErrOrgPolicyChanged = errors.New("the organisation policy changed since it was read")

// maxOrgPolicyTries bounds UpdateOrgPolicy's reads and writes when other
// changes keep coming between them.
const maxOrgPolicyTries = 100

// OrgPolicyVersion returns the organisation policy and its version.
func (c *Client) OrgPolicyVersion(ctx context.Context) (OrgPolicy, string, error) {
	var p OrgPolicy
	version, err := c.orgPolicy(ctx, http.MethodGet, nil, "", &p)
	return p, version, err
}

// SetOrgPolicyIf replaces the organisation policy if its version is still
// version, and returns it as stored with its new version; otherwise it
// changes nothing and returns an error that errors.Is ErrOrgPolicyChanged.
func (c *Client) SetOrgPolicyIf(ctx context.Context, p OrgPolicy, version string) (OrgPolicy, string, error) {
	if version == "" {
		return OrgPolicy{}, "", errors.New("SetOrgPolicyIf needs the version OrgPolicyVersion returned")
	}
	var out OrgPolicy
	version, err := c.orgPolicy(ctx, http.MethodPut, &p, version, &out)
	return out, version, err
}

// UpdateOrgPolicy reads the organisation policy, makes change to it and
// writes the result back if nobody changed the policy meanwhile; if
// somebody did, it starts again from what they wrote. change may run
// more than once and must not keep state between runs. It returns the
// policy as stored.
func (c *Client) UpdateOrgPolicy(ctx context.Context, change func(OrgPolicy) (OrgPolicy, error)) (OrgPolicy, error) {
	for range maxOrgPolicyTries {
		p, version, err := c.OrgPolicyVersion(ctx)
		if err != nil {
			return OrgPolicy{}, err
		}
		if version == "" {
			return OrgPolicy{}, errors.New("the server gives no version of the organisation policy, so a change could overwrite another admin's; upgrade the server")
		}
		if p, err = change(p); err != nil {
			return OrgPolicy{}, err
		}
		p, _, err = c.SetOrgPolicyIf(ctx, p, version)
		if !errors.Is(err, ErrOrgPolicyChanged) {
			return p, err
		}
	}
	return OrgPolicy{}, fmt.Errorf("the organisation policy changed %d times while this change was being made; try again", maxOrgPolicyTries)
}

// orgPolicy sends a request for the policy, with If-Match when version is
// set, decodes the answer into out and returns its ETag.
func (c *Client) orgPolicy(ctx context.Context, method string, body *OrgPolicy, version string, out *OrgPolicy) (string, error) {
	token := c.bearer()
	etag, err := c.orgPolicyAs(ctx, token, method, body, version, out)
	if IsStatus(err, http.StatusUnauthorized) {
		again, rerr := c.renewed(ctx, token)
		if rerr != nil {
			return "", rerr
		}
		if again {
			return c.orgPolicyAs(ctx, c.bearer(), method, body, version, out)
		}
	}
	return etag, err
}

// orgPolicyAs is orgPolicy with token.
func (c *Client) orgPolicyAs(ctx context.Context, token, method string, body *OrgPolicy, version string, out *OrgPolicy) (string, error) {
	const path = "/api/v1/org/policy"
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return "", err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL.String()+path, rd)
	if err != nil {
		return "", err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if version != "" {
		req.Header.Set("If-Match", version)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", c.ReachError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusPreconditionFailed {
		return "", changedError{readError(resp)}
	}
	if resp.StatusCode >= 300 {
		return "", readError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return "", fmt.Errorf("read %s %s response: %w", method, path, err)
	}
	return resp.Header.Get("ETag"), nil
}

// changedError is the server's 412 answer, which is ErrOrgPolicyChanged.
type changedError struct{ err error }

func (e changedError) Error() string        { return e.err.Error() }
func (e changedError) Unwrap() error        { return e.err }
func (e changedError) Is(target error) bool { return target == ErrOrgPolicyChanged }
