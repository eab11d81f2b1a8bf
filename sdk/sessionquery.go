package sdk

import (
	"context"
	"net/http"
	"net/url"
)

// SessionQuery chooses the sessions Sessions lists.
type SessionQuery struct {
	// AllUsers lists everyone's sessions (organisation admins only), not
	// just the caller's.
	AllUsers bool
	// ActiveOnly leaves out ended and failed sessions.
	ActiveOnly bool
}

// Sessions returns the sessions q chooses.
func (c *Client) Sessions(ctx context.Context, q SessionQuery) ([]Session, error) {
	v := url.Values{}
	if q.AllUsers {
		v.Set("all", "true")
	}
	if q.ActiveOnly {
		v.Set("active", "true")
	}
	path := "/api/v1/sessions"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var s []Session
	return s, c.do(ctx, http.MethodGet, path, nil, &s)
}
