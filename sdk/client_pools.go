package sdk

import (
	"context"
	"net/http"
)

// WarmPools lists the warm pools the caller administers.
func (c *Client) WarmPools(ctx context.Context) ([]WarmPool, error) {
	var out []WarmPool
	return out, c.do(ctx, http.MethodGet, "/api/v1/pools", nil, &out)
}

// SetWarmPool creates, resizes or (Size 0) removes a warm pool.
func (c *Client) SetWarmPool(ctx context.Context, p WarmPool) (WarmPool, error) {
	var out WarmPool
	return out, c.do(ctx, http.MethodPut, "/api/v1/pools", p, &out)
}
