package storetest

import (
	"context"
	"errors"
	"testing"

	"github.com/devgpu/devgpu/internal/store"
)

func testImages(t *testing.T, ctx context.Context, s store.Store) {
	py := store.CatalogImage{Name: "python-cuda", Ref: "registry.example/ml/python-cuda@sha256:" + "ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34"}
	if err := s.AddImage(ctx, &py); err != nil || py.CreatedAt.IsZero() {
		t.Fatalf("AddImage: %v (created %v)", err, py.CreatedAt)
	}
	if err := s.AddImage(ctx, &store.CatalogImage{Name: "python-cuda", Ref: "other"}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("AddImage of a taken name: %v, want ErrConflict", err)
	}
	torch := store.CatalogImage{Name: "a-torch", Ref: "docker.io/pytorch/pytorch:2.5"}
	if err := s.AddImage(ctx, &torch); err != nil {
		t.Fatal(err)
	}
	got, err := s.ImageByName(ctx, "python-cuda")
	if err != nil || got != py {
		t.Fatalf("ImageByName = %+v, %v; want %+v", got, err, py)
	}
	list, err := s.ListImages(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "a-torch" || list[1].Name != "python-cuda" {
		t.Fatalf("ListImages = %+v, %v", list, err)
	}
	if err := s.RemoveImage(ctx, "a-torch"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveImage(ctx, "a-torch"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second RemoveImage: %v, want ErrNotFound", err)
	}
	if _, err := s.ImageByName(ctx, "a-torch"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ImageByName of a removed image: %v", err)
	}
}
