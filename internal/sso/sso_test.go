package sso

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	return Config{
		Issuer:      "https://login.example.com/tenant/v2.0",
		ClientID:    "devgpu-cli",
		AdminGroups: []string{"gpu-admins"},
		Projects: []ProjectMapping{
			{Group: "ml", Project: "vision", Role: "developer"},
			{Group: "ml-leads", Project: "vision", Role: "admin"},
			{Group: "nlp", Project: "text"},
		},
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string // "" accepts; else a part of the message
	}{
		{"valid", func(*Config) {}, ""},
		{"http loopback", func(c *Config) { c.Issuer = "http://127.0.0.1:5556" }, ""},
		{"http localhost", func(c *Config) { c.Issuer = "http://localhost:5556/dex" }, ""},
		{"http ipv6 loopback", func(c *Config) { c.Issuer = "http://[::1]:5556" }, ""},
		{"all claims", func(c *Config) { c.UsernameClaim = "upn" }, ""},
		{"no issuer", func(c *Config) { c.Issuer = "" }, "oidc.issuer is missing"},
		{"not a url", func(c *Config) { c.Issuer = "login.example.com" }, "not an http(s) URL"},
		{"ftp", func(c *Config) { c.Issuer = "ftp://login.example.com" }, "not an http(s) URL"},
		{"http remote", func(c *Config) { c.Issuer = "http://login.example.com" }, "http is allowed only to 127.0.0.1, ::1 or localhost"},
		{"query", func(c *Config) { c.Issuer = "https://login.example.com/?tenant=x" }, "has a query"},
		{"no client", func(c *Config) { c.ClientID = " " }, "oidc.client_id is missing"},
		{"scopes without openid", func(c *Config) { c.Scopes = []string{"profile"} }, "lacks openid"},
		{"scope with space", func(c *Config) { c.Scopes = []string{"openid profile"} }, "not one scope"},
		{"unknown claim", func(c *Config) { c.UsernameClaim = "nickname" }, "use preferred_username, email, upn or sub"},
		{"empty admin group", func(c *Config) { c.AdminGroups = []string{""} }, "oidc.admin_groups[0] is empty"},
		{"mapping without group", func(c *Config) { c.Projects[1].Group = "" }, "oidc.projects[1] has no group"},
		{"mapping without project", func(c *Config) { c.Projects[0].Project = "" }, "oidc.projects[0] (group \"ml\") has no project"},
		{"mapping bad role", func(c *Config) { c.Projects[0].Role = "owner" }, "use developer or admin"},
		{"mapping bad project", func(c *Config) { c.Projects[0].Project = "Vision!" }, "project name"},
		{"negative ttl", func(c *Config) { c.SessionTTL = -time.Hour }, "oidc.session_ttl -1h0m0s is negative"},
		{"negative recheck", func(c *Config) { c.RecheckInterval = -time.Minute }, "oidc.recheck_interval -1m0s is negative"},
		{"recheck over ttl", func(c *Config) { c.SessionTTL = time.Minute }, "longer than oidc.session_ttl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := validConfig()
			tc.change(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("Validate accepted %+v; want an error with %q", c, tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("Validate = %q; want it to contain %q", err, tc.want)
			}
			if tc.want != "" {
				if _, err := New(c, nil); err == nil {
					t.Fatal("New accepted a configuration Validate refuses")
				}
			}
		})
	}
}

func TestWithDefaults(t *testing.T) {
	t.Parallel()
	c := Config{Issuer: "https://x.example.com", ClientID: "c"}.WithDefaults()
	if !reflect.DeepEqual(c.Scopes, []string{"openid", "profile", "email", "offline_access"}) ||
		c.UsernameClaim != "preferred_username" || c.GroupsClaim != "groups" ||
		c.SessionTTL != 8*time.Hour || c.RecheckInterval != 5*time.Minute {
		t.Fatalf("WithDefaults = %+v", c)
	}
	c.Scopes[0] = "changed"
	if DefaultScopes[0] != "openid" {
		t.Fatal("WithDefaults shares DefaultScopes")
	}
	set := Config{Scopes: []string{"openid"}, UsernameClaim: "email", GroupsClaim: "roles", SessionTTL: time.Hour, RecheckInterval: time.Minute}
	if got := set.WithDefaults(); !reflect.DeepEqual(got, set) {
		t.Fatalf("WithDefaults changed set fields: %+v", got)
	}
}

func TestGrantsFor(t *testing.T) {
	t.Parallel()
	c := validConfig()
	for _, tc := range []struct {
		name   string
		groups []string
		want   Grants
	}{
		{"none", nil, Grants{Projects: map[string]string{}}},
		{"unmapped", []string{"sales"}, Grants{Projects: map[string]string{}}},
		{"admin only", []string{"gpu-admins"}, Grants{OrgAdmin: true, Projects: map[string]string{}}},
		{"developer", []string{"ml"}, Grants{Projects: map[string]string{"vision": "developer"}}},
		{"empty role is developer", []string{"nlp"}, Grants{Projects: map[string]string{"text": "developer"}}},
		{"admin beats developer", []string{"ml", "ml-leads"}, Grants{Projects: map[string]string{"vision": "admin"}}},
		{"admin beats developer, other order", []string{"ml-leads", "ml"}, Grants{Projects: map[string]string{"vision": "admin"}}},
		{"case matters", []string{"ML", "GPU-Admins"}, Grants{Projects: map[string]string{}}},
		{"all", []string{"nlp", "gpu-admins", "ml"}, Grants{OrgAdmin: true, Projects: map[string]string{"vision": "developer", "text": "developer"}}},
	} {
		got := c.GrantsFor(tc.groups)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: GrantsFor(%q) = %+v; want %+v", tc.name, tc.groups, got, tc.want)
		}
		if got.Any() != (tc.want.OrgAdmin || len(tc.want.Projects) > 0) {
			t.Errorf("%s: Any() = %v", tc.name, got.Any())
		}
	}
	// Admin wins whichever mapping comes first.
	c.Projects = []ProjectMapping{{Group: "a", Project: "p", Role: "admin"}, {Group: "b", Project: "p", Role: "developer"}}
	if got := c.GrantsFor([]string{"a", "b"}); got.Projects["p"] != "admin" {
		t.Errorf("GrantsFor with admin mapped first = %+v", got)
	}
}

func TestGrantingGroups(t *testing.T) {
	t.Parallel()
	c := validConfig()
	c.AdminGroups = append(c.AdminGroups, "ml")
	want := []string{"gpu-admins", "ml", "ml-leads", "nlp"}
	if got := c.GrantingGroups(); !reflect.DeepEqual(got, want) {
		t.Fatalf("GrantingGroups = %q; want %q", got, want)
	}
	if got := (Config{}).GrantingGroups(); len(got) != 0 {
		t.Fatalf("GrantingGroups of no mappings = %q", got)
	}
}

func TestUserName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"alice", "alice"},
		{"Alice", "alice"},
		{"alice@contoso.com", "alice_contoso.com"},
		{"Alice.Smith@Contoso.COM", "alice.smith_contoso.com"},
		{"1st.shift@x.org", "_1st.shift_x.org"},
		{"-dash", "_-dash"},
		{".dot", "_.dot"},
		// A value that starts with '_' gets the prefix too, so that it
		// cannot meet a prefixed one: _1st.shift_x.org is 1st.shift@x.org's.
		{"_1st.shift_x.org", "__1st.shift_x.org"},
		{"@x", "__x"},
		{"AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "aaaaaaaaaaaaaaaaaaaaaikzqfvrsasafhy782bbtaq"},
		{"-AAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "_-aaaaaaaaaaaaaaaaaaaaikzqfvrsasafhy782bbtaq"},
		{strings.Repeat("a", 52) + "@example.com", strings.Repeat("a", 52) + "_example.com"},
	} {
		got, err := UserName("preferred_username", tc.in)
		if err != nil || got != tc.want {
			t.Errorf("UserName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "claim is empty"},
		{strings.Repeat("a", 60) + "@example.com", "more than devgpu's 64"},
		{"_" + strings.Repeat("1", 64), "more than devgpu's 64"},
		// Characters outside ASCII letters, digits, '.', '_', '-' and '@'
		// are refused, not replaced: replacing made bob+1@x and bob-1@x,
		// or ålice and élice, one name.
		{"bob+1@x.org", `names you "bob+1@x.org", which holds characters devgpu user names cannot (only letters, digits, '.', '_', '-' and '@'); ask the administrator to set oidc.username_claim to another claim`},
		{"ålice", `names you "\u00e5lice", which holds characters`},
		{"élice", `names you "\u00e9lice"`},
		// The Kelvin sign, which strings.ToLower folds to 'k'.
		{"\u212aevin", `names you "\u212aevin"`},
		{"\u0130nci", `names you "\u0130nci"`}, // dotted capital I, which ToLower makes "i̇"
		{"bob_fabrikam.com#EXT#@contoso.onmicrosoft.com", "holds characters devgpu user names cannot"},
		{"alice smith", "holds characters"},
		{"alice\x1b[2J", `names you "alice\x1b[2J"`},
		{"\xff", `names you "\xff"`},
	} {
		_, err := UserName("email", tc.in)
		var e *Error
		if !errors.As(err, &e) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("UserName(%q) = %v; want an *Error with %q", tc.in, err, tc.want)
		}
	}
	// Two values make one name only when they differ in ASCII case or in
	// '@' against '_'.
	seen := map[string]string{}
	for _, in := range []string{
		"bob1@x.org", "bob-1@x.org", "bob.1@x.org", "bob_1@x.orgg", "1bob@x.org", "_1bob@x.org", "-1bob@x.org",
		"k", "_k", "@@k", "kk", "a.b", "a-b", "ab", "_ab",
	} {
		name, err := UserName("email", in)
		if err != nil {
			t.Fatalf("UserName(%q): %v", in, err)
		}
		if other, ok := seen[name]; ok {
			t.Errorf("UserName(%q) = UserName(%q) = %q", in, other, name)
		}
		seen[name] = in
	}
}

func TestSealOpen(t *testing.T) {
	t.Parallel()
	key := []byte("the agent key, 32 bytes or other")
	sealed, err := Seal(key, "provider-refresh-token")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("provider-refresh-token")) {
		t.Fatal("sealed value holds the plaintext")
	}
	got, err := Open(key, sealed)
	if err != nil || got != "provider-refresh-token" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	again, _ := Seal(key, "provider-refresh-token")
	if bytes.Equal(again, sealed) {
		t.Fatal("two seals of one value are equal; the nonce is not random")
	}
	if _, err := Open([]byte("another key"), sealed); !errors.Is(err, ErrSealKey) {
		t.Fatalf("Open with another key = %v; want ErrSealKey", err)
	}
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	if _, err := Open(key, tampered); !errors.Is(err, ErrSealKey) {
		t.Fatalf("Open of a tampered value = %v; want ErrSealKey", err)
	}
	if _, err := Open(key, sealed[:5]); !errors.Is(err, ErrSealKey) {
		t.Fatalf("Open of a short value = %v; want ErrSealKey", err)
	}
	if _, err := Seal(nil, "x"); err == nil {
		t.Fatal("Seal with an empty key succeeded")
	}
	empty, err := Seal(key, "")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Open(key, empty); err != nil || got != "" {
		t.Fatalf("Open of sealed empty = %q, %v", got, err)
	}
}

func TestNewDoesNotContactProvider(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1: New must succeed all the same.
	p, err := New(Config{Issuer: "http://127.0.0.1:1", ClientID: "c"}, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if p.Config().SessionTTL != DefaultSessionTTL {
		t.Fatalf("Config() lacks defaults: %+v", p.Config())
	}
	_, err = p.Verify(t.Context(), "x.y.z", "")
	if !IsUnreachable(err) || !strings.Contains(err.Error(), "cannot be reached") {
		t.Fatalf("Verify with the provider down = %v; want unreachable", err)
	}
	_, _, err = p.Refresh(t.Context(), "rt")
	if !IsUnreachable(err) {
		t.Fatalf("Refresh with the provider down = %v; want unreachable", err)
	}
}
