package sqlstore

import (
	"context"

	"github.com/devgpu/devgpu/internal/store"
)

// AddImage adds a catalog entry; ErrConflict when the name is taken.
func (s *Store) AddImage(ctx context.Context, img *store.CatalogImage) error {
	img.CreatedAt = norm(img.CreatedAt)
	if img.CreatedAt.IsZero() {
		img.CreatedAt = now()
	}
	return s.wrap("add image "+img.Name, s.write(ctx, func() error {
		_, err := s.exec(ctx, `INSERT INTO images (name, ref, created_at) VALUES (?, ?, ?)`, img.Name, img.Ref, dbTime(img.CreatedAt))
		return err
	}))
}

// ImageByName returns a catalog entry.
func (s *Store) ImageByName(ctx context.Context, name string) (store.CatalogImage, error) {
	img := store.CatalogImage{}
	err := s.queryRow(ctx, `SELECT name, ref, created_at FROM images WHERE name = ?`, name).
		Scan(&img.Name, &img.Ref, timeCol{&img.CreatedAt})
	return img, s.wrap("image "+name, err)
}

// ListImages returns the catalog ordered by name.
func (s *Store) ListImages(ctx context.Context) ([]store.CatalogImage, error) {
	rows, err := s.query(ctx, `SELECT name, ref, created_at FROM images ORDER BY name`)
	if err != nil {
		return nil, s.wrap("list images", err)
	}
	defer rows.Close()
	var out []store.CatalogImage
	for rows.Next() {
		var img store.CatalogImage
		if err := rows.Scan(&img.Name, &img.Ref, timeCol{&img.CreatedAt}); err != nil {
			return nil, s.wrap("list images", err)
		}
		out = append(out, img)
	}
	return out, s.wrap("list images", rows.Err())
}

// RemoveImage deletes a catalog entry; ErrNotFound when there is none.
func (s *Store) RemoveImage(ctx context.Context, name string) error {
	return s.wrap("remove image "+name, s.write(ctx, func() error {
		res, err := s.exec(ctx, `DELETE FROM images WHERE name = ?`, name)
		if err != nil {
			return err
		}
		return affected(res)
	}))
}
