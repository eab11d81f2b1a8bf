package sdk

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// UsageQuery selects a usage report; zero fields take the server's
// defaults (the current month, grouped by project, all you may see).
type UsageQuery struct {
	Project string
	User    string
	Since   time.Time
	Until   time.Time
	By      string // day, user, project or gpu-type
}

// Usage returns a usage report.
func (c *Client) Usage(ctx context.Context, q UsageQuery) (UsageReport, error) {
	v := url.Values{}
	for k, s := range map[string]string{"project": q.Project, "user": q.User, "by": q.By} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339))
	}
	path := "/api/v1/usage"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var r UsageReport
	return r, c.do(ctx, http.MethodGet, path, nil, &r)
}
