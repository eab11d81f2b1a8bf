package sdk

import (
	"context"
	"net/http"
	"net/url"
)

// Images lists the image catalog.
func (c *Client) Images(ctx context.Context) ([]CatalogImage, error) {
	var out []CatalogImage
	return out, c.do(ctx, http.MethodGet, "/api/v1/images", nil, &out)
}

// AddImage adds a name for an image reference to the catalog.
func (c *Client) AddImage(ctx context.Context, name, ref string) (CatalogImage, error) {
	var out CatalogImage
	return out, c.do(ctx, http.MethodPost, "/api/v1/images", CatalogImage{Name: name, Ref: ref}, &out)
}

// RemoveImage removes a name from the catalog.
func (c *Client) RemoveImage(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/images/"+url.PathEscape(name), nil, nil)
}
