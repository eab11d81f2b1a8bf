//go:build linux && !agentonly

package aca

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/devgpu/devgpu/internal/agentimage"
)

// images makes session images: a base image with the agent layer
// appended, in the customer's registry under a tag derived from the base's
// digest and the agent layer's, so that a second session of one base
// pushes nothing (and a restarted control plane finds it there with a
// HEAD).
type images struct {
	cfg       *checked
	transport http.RoundTripper

	layerOnce sync.Once
	layer     v1.Layer
	layerHash v1.Hash
	layerErr  error

	mu   sync.Mutex
	made map[string]string // base digest -> session image reference

	// The ACR refresh token of the last exchange, kept until
	// refreshMargin before it expires.
	tokMu      sync.Mutex
	refresh    string
	refreshEnd time.Time
}

// refreshMargin is how long before its expiry a cached ACR refresh token
// is exchanged anew; exchangeBodyMax bounds how much of a refused
// exchange's body an error quotes.
const (
	refreshMargin   = 5 * time.Minute
	exchangeBodyMax = 300
)

func newImages(c *checked) *images {
	t := c.RegistryTransport
	if t == nil {
		t = http.DefaultTransport
	}
	return &images{cfg: c, transport: t, made: map[string]string{}}
}

// agentLayer is the agent's layer, built once per runtime from the
// process-wide cache.
func (im *images) agentLayer() (v1.Layer, v1.Hash, error) {
	im.layerOnce.Do(func() {
		im.layer, im.layerHash, im.layerErr = cachedAgentLayer(im.cfg.AgentBinary)
		if im.layerErr != nil {
			im.layerErr = fmt.Errorf("aca backend %s: aca.agent_binary %s: %w", im.cfg.Backend, im.cfg.AgentBinary, im.layerErr)
		}
	})
	return im.layer, im.layerHash, im.layerErr
}

// agentLayers caches agent layers by the binary's path, size and
// modification time: compressing the agent (tens of megabytes) is the
// slowest step of preparing an image, and every backend of a server adds
// the same one.
var agentLayers sync.Map // layerKey -> *layerEntry

type layerKey struct {
	path  string
	size  int64
	mtime time.Time
}

type layerEntry struct {
	once sync.Once
	l    v1.Layer
	h    v1.Hash
	err  error
}

// cachedAgentLayer is agentimage.AgentLayer compressed once and kept in
// memory, so that its digest, its upload and every later session image
// reuse the same bytes.
func cachedAgentLayer(path string) (v1.Layer, v1.Hash, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("read the agent binary: %w", err)
	}
	v, _ := agentLayers.LoadOrStore(layerKey{path, fi.Size(), fi.ModTime()}, &layerEntry{})
	e := v.(*layerEntry)
	e.once.Do(func() {
		l, err := agentimage.AgentLayer(path)
		if err != nil {
			e.err = err
			return
		}
		rc, err := l.Compressed()
		if err != nil {
			e.err = fmt.Errorf("compress the agent layer: %w", err)
			return
		}
		gz, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			e.err = fmt.Errorf("compress the agent layer: %w", err)
			return
		}
		// LayerFromOpener takes gzip input as the compressed form as is.
		e.l, e.err = tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(gz)), nil })
		if e.err == nil {
			e.h, e.err = e.l.Digest()
		}
	})
	return e.l, e.h, e.err
}

// pushLayer uploads the agent's layer to the session repository unless
// it is there already, so that the first session's start uploads only a
// manifest and a config (remote.WriteLayer asks the registry first).
func (im *images) pushLayer(ctx context.Context) error {
	layer, _, err := im.agentLayer()
	if err != nil {
		return err
	}
	repo, err := name.NewRepository(im.cfg.Registry+"/"+im.cfg.Repository, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("aca backend %s: the session repository's name: %w; fix aca.registry or aca.repository", im.cfg.Backend, err)
	}
	if err := remote.WriteLayer(repo, layer, im.options(ctx, im.cfg.Registry)...); err != nil {
		return im.registryErr("push the agent's layer to "+repo.String(), err)
	}
	return nil
}

// platform is what Container Apps runs: linux/amd64 containers only
// (https://learn.microsoft.com/azure/container-apps/containers: "Linux-based
// x86-64 (linux/amd64) container images are supported").
var platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// prepare returns the reference of the session image for base, pushing it
// to the registry first unless it is there already.
func (im *images) prepare(ctx context.Context, base string, progress func(string, int64, int64)) (string, error) {
	b := "aca backend " + im.cfg.Backend
	say := func(done, total int64) {
		if progress != nil {
			progress("preparing the session image", done, total)
		}
	}
	say(0, 0)
	layer, layerHash, err := im.agentLayer()
	if err != nil {
		return "", err
	}
	ref, err := name.ParseReference(base)
	if err != nil {
		return "", fmt.Errorf("%s: image %q is not an image reference (%v); give one like registry.example.com/team/image:tag", b, base, err)
	}
	img, err := remote.Image(ref, im.options(ctx, ref.Context().RegistryStr())...)
	if err != nil {
		return "", im.registryErr("read image "+base, err)
	}
	baseHash, err := img.Digest()
	if err != nil {
		return "", im.registryErr("read image "+base, err)
	}
	im.mu.Lock()
	done, ok := im.made[baseHash.String()]
	im.mu.Unlock()
	if ok {
		return done, nil
	}
	mt, err := img.MediaType()
	if err != nil {
		return "", im.registryErr("read image "+base, err)
	}
	layerType := types.DockerLayer
	if mt == types.OCIManifestSchema1 {
		layerType = types.OCILayer
	}
	withAgent, err := mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: layerType,
		History:   v1.History{CreatedBy: "devgpu aca runtime", Comment: "the devgpu agent at " + agentimage.AgentPath},
	})
	if err != nil {
		return "", fmt.Errorf("%s: add the agent to image %s: %w", b, base, err)
	}
	want, err := withAgent.Digest()
	if err != nil {
		return "", im.registryErr("read image "+base, err)
	}
	target, err := name.NewTag(fmt.Sprintf("%s/%s:%s", im.cfg.Registry, im.cfg.Repository, sessionTag(baseHash, layerHash)), name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("%s: the session image's name: %w; fix aca.registry or aca.repository", b, err)
	}
	opts := im.options(ctx, im.cfg.Registry)
	if d, err := remote.Head(target, opts...); err == nil && d.Digest == want {
		im.remember(baseHash, target.String())
		return target.String(), nil
	} else if err != nil && !notInRegistry(err) {
		return "", im.registryErr("look for the session image "+target.String(), err)
	}
	updates := make(chan v1.Update, 16)
	reported := make(chan struct{})
	go func() {
		defer close(reported)
		for u := range updates {
			say(u.Complete, u.Total)
		}
	}()
	err = remote.Write(target, withAgent, append(opts, remote.WithProgress(updates))...)
	<-reported // remote.Write closes updates
	if err != nil {
		return "", im.registryErr("push the session image "+target.String(), err)
	}
	im.cfg.Logger.Info("session image pushed", "backend", im.cfg.Backend, "base", base, "image", target.String(), "digest", want.String())
	im.remember(baseHash, target.String())
	return target.String(), nil
}

func (im *images) remember(base v1.Hash, ref string) {
	im.mu.Lock()
	im.made[base.String()] = ref
	im.mu.Unlock()
}

// sessionTag is the tag of the session image of a base and an agent
// layer: 16 hex digits of each digest.
func sessionTag(base, layer v1.Hash) string {
	return "b" + base.Hex[:16] + "-a" + layer.Hex[:16]
}

// options are ggcr's remote options for a registry: the customer's ACR
// with the control plane's Azure identity, any other with the keychain of
// the user the server runs as (anonymous when it has nothing for it).
func (im *images) options(ctx context.Context, registry string) []remote.Option {
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(im.transport), remote.WithPlatform(platform)}
	if strings.EqualFold(registry, im.cfg.Registry) {
		return append(opts, remote.WithAuth(&acrAuth{im: im, ctx: ctx}))
	}
	return append(opts, remote.WithAuthFromKeychain(authn.DefaultKeychain))
}

// notInRegistry reports whether a registry answered that a manifest or
// repository does not exist.
func notInRegistry(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range te.Errors {
		if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode {
			return true
		}
	}
	return false
}

// registryErr says in one sentence why a registry step failed.
func (im *images) registryErr(doing string, err error) error {
	b := "aca backend " + im.cfg.Backend
	var te *transport.Error
	if errors.As(err, &te) {
		switch {
		case notInRegistry(err):
			return fmt.Errorf("%s: %s: it does not exist in its registry; check the image's name and tag", b, doing)
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%s: %s: the registry refused the control plane (%d); for %s assign the control plane's identity AcrPush, for other registries log the server's user in (docker login)", b, doing, te.StatusCode, im.cfg.Registry)
		}
	}
	var ae *acrExchangeError
	if errors.As(err, &ae) {
		return fmt.Errorf("%s: %s: %s", b, doing, ae.msg)
	}
	return fmt.Errorf("%s: %s: %w", b, doing, err)
}

// acrAuth authenticates to the customer's ACR with the control plane's
// Azure identity, by ACR's token exchange
// (https://github.com/Azure/acr/blob/main/docs/AAD-OAuth.md): an Entra ID
// access token is exchanged at POST https://<registry>/oauth2/exchange
// (grant_type=access_token, service, access_token) for an ACR refresh
// token, which ggcr then trades for access tokens at /oauth2/token
// (authn.AuthConfig.IdentityToken is exactly that refresh token).
type acrAuth struct {
	im  *images
	ctx context.Context
}

// acrExchangeError is a failed token exchange, said in one sentence.
type acrExchangeError struct{ msg string }

func (e *acrExchangeError) Error() string { return e.msg }

func (a *acrAuth) Authorization() (*authn.AuthConfig, error) {
	return a.AuthorizationContext(a.ctx)
}

func (a *acrAuth) AuthorizationContext(ctx context.Context) (*authn.AuthConfig, error) {
	im := a.im
	im.tokMu.Lock()
	defer im.tokMu.Unlock()
	if im.refresh != "" && time.Until(im.refreshEnd) > refreshMargin {
		return &authn.AuthConfig{IdentityToken: im.refresh}, nil
	}
	refresh, end, err := a.exchange(ctx)
	if err != nil {
		return nil, err
	}
	im.refresh, im.refreshEnd = refresh, end
	return &authn.AuthConfig{IdentityToken: refresh}, nil
}

// exchange trades an Entra ID token for an ACR refresh token, and says
// until when it may be used: the refresh token's own exp claim (ACR's
// refresh tokens are JWTs), or, when it has none that can be read, the
// Entra ID token's expiry.
func (a *acrAuth) exchange(ctx context.Context) (string, time.Time, error) {
	cfg := a.im.cfg
	tok, err := cfg.Credential.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{armAudience(cfg) + "/.default"}})
	if err != nil {
		return "", time.Time{}, &acrExchangeError{fmt.Sprintf("get an Entra ID token for registry %s: %v; check aca.credential", cfg.Registry, err)}
	}
	form := url.Values{
		"grant_type":   {"access_token"},
		"service":      {cfg.Registry},
		"access_token": {tok.Token},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+cfg.Registry+"/oauth2/exchange", strings.NewReader(form.Encode()))
	if err != nil {
		return "", time.Time{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := (&http.Client{Transport: a.im.transport}).Do(req)
	if err != nil {
		return "", time.Time{}, &acrExchangeError{fmt.Sprintf("reach registry %s for its token exchange: %v", cfg.Registry, err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		said := truncate(strings.Join(strings.Fields(string(body)), " "), exchangeBodyMax)
		return "", time.Time{}, &acrExchangeError{fmt.Sprintf("registry %s refused the control plane's Azure token (%s: %s); assign the control plane's identity AcrPush on it, and allow Entra ID authentication (az acr config authentication-as-arm)", cfg.Registry, resp.Status, said)}
	}
	var out struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(body, &out); err != nil || out.RefreshToken == "" {
		return "", time.Time{}, &acrExchangeError{fmt.Sprintf("registry %s answered its token exchange without a refresh token", cfg.Registry)}
	}
	end := tok.ExpiresOn
	if exp, ok := jwtExpiry(out.RefreshToken); ok {
		end = exp
	}
	return out.RefreshToken, end, nil
}

// jwtExpiry reads a JWT's exp claim without verifying it: the registry
// verifies it; the runtime only needs to know when to ask for another.
func jwtExpiry(tok string) (time.Time, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(b, &claims) != nil || claims.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}

// armAudience is the audience of the ARM tokens the runtime asks for: the
// cloud's ResourceManager audience (Azure public by default), with
// "/.default" appended as azcore's ARM pipeline does. ACR accepts
// ARM-audience tokens in its exchange unless the registry disallows them
// (az acr config authentication-as-arm).
func armAudience(c *checked) string {
	var cc cloud.Configuration
	if c.ClientOptions != nil {
		cc = c.ClientOptions.Cloud
	}
	if s, ok := cc.Services[cloud.ResourceManager]; ok && s.Audience != "" {
		return s.Audience
	}
	return cloud.AzurePublic.Services[cloud.ResourceManager].Audience
}
