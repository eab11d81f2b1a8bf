package image

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

func TestAllowedRegistry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ref     string
		allowed []string
		reg     string
		ok      bool
	}{
		{"ubuntu", []string{"docker.io"}, "docker.io", true},
		{"ubuntu:22.04", []string{"index.docker.io"}, "docker.io", true},
		{"library/ubuntu", []string{"registry-1.docker.io"}, "docker.io", true},
		{"docker.io/library/ubuntu@sha256:" + hex64, []string{"https://index.docker.io/v1/"}, "docker.io", true},
		{"index.docker.io/nvidia/cuda:12.4", []string{"docker.io/nvidia"}, "docker.io", true},
		{"nvidia/cuda", []string{"docker.io/library"}, "docker.io", false},
		{"ubuntu", []string{"docker.io/library"}, "docker.io", true},
		{"ubuntu", []string{"ghcr.io"}, "docker.io", false},
		{"ghcr.io/acme/app:1", []string{"ghcr.io/acme"}, "ghcr.io", true},
		{"ghcr.io/acme/app:1", []string{"ghcr.io/acme/"}, "ghcr.io", true},
		{"ghcr.io/acmeevil/app:1", []string{"ghcr.io/acme"}, "ghcr.io", false},
		{"GHCR.io/acme/app", []string{"ghcr.io"}, "ghcr.io", true},
		{"registry.local:5000/app", []string{"registry.local:5000"}, "registry.local:5000", true},
		{"registry.local:5000/app", []string{"registry.local"}, "registry.local:5000", false},
		{"nvcr.io/nvidia/pytorch:24.01-py3", nil, "nvcr.io", false},
		{"Not A Ref", []string{"docker.io"}, "", false},
		{"", []string{"docker.io"}, "", false},
	}
	for _, tt := range tests {
		reg, ok := AllowedRegistry(tt.ref, tt.allowed)
		if reg != tt.reg || ok != tt.ok {
			t.Errorf("AllowedRegistry(%q, %q) = %q, %v; want %q, %v", tt.ref, tt.allowed, reg, ok, tt.reg, tt.ok)
		}
	}
}

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func FuzzAllowedRegistry(f *testing.F) {
	for _, s := range []string{"ubuntu", "ghcr.io/acme/app:1", "localhost:5000/x@sha256:" + hex64, "../x", "a//b"} {
		f.Add(s, "docker.io")
	}
	f.Fuzz(func(t *testing.T, ref, allowed string) {
		reg, ok := AllowedRegistry(ref, []string{allowed})
		if ok && reg == "" {
			t.Fatalf("allowed with no registry: %q %q", ref, allowed)
		}
		if _, err := name.ParseReference(ref); err != nil && ok {
			t.Fatalf("unparsable %q allowed", ref)
		}
	})
}

func TestKeychain(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	t.Setenv("HOME", t.TempDir())
	kc := Keychain(map[string]Credential{
		"index.docker.io": {Username: "u", Password: "p"},
		"ghcr.io":         {Token: "tok"},
		"quay.io":         {Username: "robot", Token: "tok"},
	})
	tests := []struct {
		ref  string
		want authn.AuthConfig
	}{
		{"ubuntu", authn.AuthConfig{Username: "u", Password: "p"}},
		{"ghcr.io/a/b", authn.AuthConfig{RegistryToken: "tok"}},
		{"quay.io/a/b", authn.AuthConfig{Username: "robot", Password: "tok"}},
		{"nvcr.io/a/b", authn.AuthConfig{}},
	}
	for _, tt := range tests {
		r, err := name.ParseReference(tt.ref)
		if err != nil {
			t.Fatal(err)
		}
		a, err := kc.Resolve(r.Context())
		if err != nil {
			t.Fatal(err)
		}
		got, err := a.Authorization()
		if err != nil {
			t.Fatal(err)
		}
		if *got != tt.want {
			t.Errorf("%s: got %+v, want %+v", tt.ref, *got, tt.want)
		}
	}
}
