package image

import (
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// dockerHub is the name under which Docker Hub is reported and matched.
// docker.io, index.docker.io, registry-1.docker.io and short names such as
// "ubuntu" or "library/ubuntu" all mean it.
const dockerHub = "docker.io"

// Credential is what the server config holds for one registry. Set Username
// and Password (or Username and Token, the token then being the password, as
// GHCR, GitLab and Quay robot accounts expect), or Token alone, which is sent
// to the registry as a bearer token.
type Credential struct {
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Token    string `json:"token,omitempty"`
}

// Keychain resolves registry credentials: first the per-registry credentials
// from the server config (keyed by registry host, normalised so that
// "docker.io" and "index.docker.io" are one key), then the docker
// config.json (authn.DefaultKeychain, which honours $DOCKER_CONFIG and falls
// back to podman's auth.json), and otherwise anonymous access.
func Keychain(creds map[string]Credential) authn.Keychain {
	static := make(staticKeychain, len(creds))
	for reg, c := range creds {
		static[normRegistry(reg)] = c
	}
	return authn.NewMultiKeychain(static, authn.DefaultKeychain)
}

type staticKeychain map[string]Credential

func (k staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	c, ok := k[normRegistry(r.RegistryStr())]
	if !ok {
		return authn.Anonymous, nil
	}
	switch {
	case c.Token != "" && c.Username == "":
		return authn.FromConfig(authn.AuthConfig{RegistryToken: c.Token}), nil
	case c.Token != "":
		return &authn.Basic{Username: c.Username, Password: c.Token}, nil
	case c.Username != "" || c.Password != "":
		return &authn.Basic{Username: c.Username, Password: c.Password}, nil
	}
	return authn.Anonymous, nil
}

// AllowedRegistry reports the registry ref is pulled from and whether that
// registry is on the allow-list. Docker Hub is reported as "docker.io",
// whichever of its names ref or the list uses; a short name such as "ubuntu"
// is on Docker Hub. An allow-list entry may also name a repository prefix,
// "ghcr.io/acme" allowing ghcr.io/acme/* but not ghcr.io/other/*. A ref that
// does not parse is never allowed.
func AllowedRegistry(ref string, allowed []string) (registry string, ok bool) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", false
	}
	registry = normRegistry(r.Context().RegistryStr())
	repo := registry + "/" + r.Context().RepositoryStr()
	for _, a := range allowed {
		reg, prefix := splitAllowEntry(a)
		if reg == "" || reg != registry {
			continue
		}
		if prefix == "" {
			return registry, true
		}
		p := registry + "/" + prefix
		if repo == p || strings.HasPrefix(repo, p+"/") {
			return registry, true
		}
	}
	return registry, false
}

// splitAllowEntry splits an allow-list entry such as "https://ghcr.io/acme/"
// into its normalised registry and repository prefix.
func splitAllowEntry(a string) (registry, prefix string) {
	a = strings.TrimSpace(a)
	a = strings.TrimPrefix(a, "https://")
	a = strings.TrimPrefix(a, "http://")
	a = strings.Trim(a, "/")
	host, prefix, _ := strings.Cut(a, "/")
	if prefix == "v1" || prefix == "v2" { // "https://index.docker.io/v1/" from config.json
		prefix = ""
	}
	return normRegistry(host), strings.ToLower(prefix)
}

// normRegistry maps a registry host to the one name used for matching.
func normRegistry(host string) string {
	host = strings.ToLower(strings.TrimSpace(host))
	host = strings.TrimPrefix(host, "https://")
	host = strings.TrimPrefix(host, "http://")
	host, _, _ = strings.Cut(host, "/")
	switch host {
	case "docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return dockerHub
	}
	return host
}
