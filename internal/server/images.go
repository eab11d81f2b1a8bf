package server

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/image"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

var imageName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func imageToSDK(img store.CatalogImage) sdk.CatalogImage {
	return sdk.CatalogImage{Name: img.Name, Ref: img.Ref, CreatedAt: img.CreatedAt.UTC()}
}

func (a *API) listImages(w http.ResponseWriter, r *http.Request, caller store.User) error {
	images, err := a.s.store.ListImages(r.Context())
	if err != nil {
		return err
	}
	out := make([]sdk.CatalogImage, 0, len(images))
	for _, img := range images {
		out = append(out, imageToSDK(img))
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

func (a *API) addImage(w http.ResponseWriter, r *http.Request, caller store.User) error {
	if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can change the image catalog", nil); err != nil {
		return err
	}
	var req sdk.CatalogImage
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	if !imageName.MatchString(req.Name) {
		return httpapi.Errorf(http.StatusBadRequest, "image name %q is invalid; use lower-case letters, digits, '.', '_' and '-'", req.Name)
	}
	if reg, _ := image.AllowedRegistry(req.Ref, nil); reg == "" {
		return httpapi.Errorf(http.StatusBadRequest, "%q is not an image reference such as ghcr.io/org/python-cuda:12.4 or ...@sha256:<digest>", req.Ref)
	}
	img := store.CatalogImage{Name: req.Name, Ref: req.Ref, CreatedAt: a.s.now()}
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		if err := tx.AddImage(r.Context(), &img); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "image.add", "", img.Name, nil, imageToSDK(img))
	})
	if errors.Is(err, store.ErrConflict) {
		return httpapi.Errorf(http.StatusConflict, "image %s is in the catalog already; remove it first to point it elsewhere", req.Name)
	}
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusCreated, imageToSDK(img))
	return nil
}

func (a *API) removeImage(w http.ResponseWriter, r *http.Request, caller store.User) error {
	if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can change the image catalog", nil); err != nil {
		return err
	}
	name := r.PathValue("name")
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		img, err := tx.ImageByName(r.Context(), name)
		if err != nil {
			return err
		}
		if err := tx.RemoveImage(r.Context(), name); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "image.remove", "", name, imageToSDK(img), nil)
	})
	if errors.Is(err, store.ErrNotFound) {
		return httpapi.Errorf(http.StatusNotFound, "image %s is not in the catalog; `devgpu admin image list` shows it", name)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// resolveImage turns what a session asked for (a catalog name, a
// reference, or nothing) into the reference to run. A reference outside
// the catalog must come from a registry on the organisation's allow-list.
func resolveImage(ctx context.Context, tx store.Store, org sdk.OrgPolicy, requested string) (string, error) {
	if requested == "" {
		return "", nil
	}
	img, err := tx.ImageByName(ctx, requested)
	if err == nil {
		return img.Ref, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return "", err
	}
	if !strings.ContainsAny(requested, "/:@") {
		return "", httpapi.Errorf(http.StatusBadRequest, "image %s is not in the catalog; `devgpu admin image list` shows the catalog", requested)
	}
	reg, ok := image.AllowedRegistry(requested, org.Registries)
	if !ok {
		if reg == "" {
			return "", httpapi.Errorf(http.StatusBadRequest, "%q is not an image reference such as ghcr.io/org/image:tag", requested)
		}
		allowed := "none"
		if len(org.Registries) > 0 {
			allowed = strings.Join(slices.Sorted(slices.Values(org.Registries)), ", ")
		}
		return "", httpapi.Errorf(http.StatusForbidden, "images from %s are not allowed; the organisation allows bring-your-own images from: %s", reg, allowed)
	}
	return requested, nil
}
