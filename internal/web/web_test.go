package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"
)

func serve(t *testing.T, h http.Handler, method, target string, header http.Header) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// wantSecurityHeaders fails unless resp carries every security header.
func wantSecurityHeaders(t *testing.T, what string, resp *http.Response) {
	t.Helper()
	want := map[string]string{
		"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
			"font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
		"X-Frame-Options":        "DENY",
	}
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s: %s is %q, want %q", what, k, got, v)
		}
	}
}

// The page and every asset it names are served from the embedded build
// with their content type, the security headers, no-cache and a strong
// ETag; the policy has no 'unsafe-inline' or 'unsafe-eval' for scripts.
func TestServesIndexAndAssets(t *testing.T) {
	t.Parallel()
	h := Handler()
	index, err := dist.ReadFile("dist/index.html")
	if err != nil {
		t.Fatal(err)
	}
	resp, body := serve(t, h, "GET", "/", nil)
	if resp.StatusCode != http.StatusOK || body != string(index) {
		t.Fatalf("GET /: %d, want 200 with dist/index.html; got:\n%s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("GET /: Content-Type %q", ct)
	}
	wantSecurityHeaders(t, "GET /", resp)
	script := regexp.MustCompile(`script-src ([^;]*)`).FindStringSubmatch(resp.Header.Get("Content-Security-Policy"))
	if script == nil || script[1] != "'self'" {
		t.Errorf("GET /: the policy's script-src is %q, want only 'self'", script)
	}

	types := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
	refs := regexp.MustCompile(`(?:src|href)="(/assets/[^"]+)"`).FindAllStringSubmatch(string(index), -1)
	if len(refs) < 2 {
		t.Fatalf("index.html names %d assets, want its script and its style sheet:\n%s", len(refs), index)
	}
	for _, ref := range append(refs, []string{"", "/"}) {
		p := ref[1]
		resp, body := serve(t, h, "GET", p, nil)
		if resp.StatusCode != http.StatusOK || body == "" {
			t.Errorf("GET %s: %d with %d bytes, want 200 with the file", p, resp.StatusCode, len(body))
			continue
		}
		wantSecurityHeaders(t, "GET "+p, resp)
		for ext, ct := range types {
			if strings.HasSuffix(p, ext) && resp.Header.Get("Content-Type") != ct {
				t.Errorf("GET %s: Content-Type %q, want %q", p, resp.Header.Get("Content-Type"), ct)
			}
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
			t.Errorf("GET %s: Cache-Control %q, want no-cache", p, cc)
		}
		if etag := resp.Header.Get("ETag"); !regexp.MustCompile(`^"[0-9a-f]{32}"$`).MatchString(etag) {
			t.Errorf("GET %s: ETag %q, want a strong one", p, etag)
		}
		if resp.Header.Get("Last-Modified") != "" {
			t.Errorf("GET %s: a Last-Modified from an embed.FS, which has no times", p)
		}
	}
}

// A browser that has the page revalidates it: the same ETag gets 304 with
// no body, another gets the page; a different content has a different
// ETag.
func TestETag(t *testing.T) {
	t.Parallel()
	h := Handler()
	first, body := serve(t, h, "GET", "/", nil)
	etag := first.Header.Get("ETag")
	resp, got := serve(t, h, "GET", "/", http.Header{"If-None-Match": {etag}})
	if resp.StatusCode != http.StatusNotModified || got != "" {
		t.Fatalf("GET / with If-None-Match %s: %d with %d bytes, want 304 and no body", etag, resp.StatusCode, len(got))
	}
	if resp.Header.Get("ETag") != etag {
		t.Errorf("304: ETag %q, want %q", resp.Header.Get("ETag"), etag)
	}
	wantSecurityHeaders(t, "304", resp)
	resp, got = serve(t, h, "GET", "/", http.Header{"If-None-Match": {`"0123"`}})
	if resp.StatusCode != http.StatusOK || got != body {
		t.Fatalf("GET / with another ETag: %d, want 200 with the page", resp.StatusCode)
	}
	resp, _ = serve(t, h, "HEAD", "/", http.Header{"If-None-Match": {etag}})
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("HEAD / with If-None-Match: %d, want 304", resp.StatusCode)
	}

	a, err := load(fstest.MapFS{"index.html": {Data: []byte("a")}, "assets/app.js": {Data: []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := load(fstest.MapFS{"index.html": {Data: []byte("b")}, "assets/app.js": {Data: []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	if a["/"].etag == b["/"].etag {
		t.Errorf("two different pages share the ETag %s", a["/"].etag)
	}
}

// HEAD answers as GET does, without the body.
func TestHead(t *testing.T) {
	t.Parallel()
	h := Handler()
	get, body := serve(t, h, "GET", "/", nil)
	resp, got := serve(t, h, "HEAD", "/", nil)
	if resp.StatusCode != http.StatusOK || got != "" {
		t.Fatalf("HEAD /: %d with %d bytes, want 200 and no body", resp.StatusCode, len(got))
	}
	for _, k := range []string{"Content-Type", "ETag", "Cache-Control", "Content-Security-Policy"} {
		if resp.Header.Get(k) != get.Header.Get(k) {
			t.Errorf("HEAD /: %s %q, GET has %q", k, resp.Header.Get(k), get.Header.Get(k))
		}
	}
	if cl := resp.Header.Get("Content-Length"); cl != get.Header.Get("Content-Length") || cl == "" {
		t.Errorf("HEAD /: Content-Length %q, want %d", cl, len(body))
	}
}

// Only / and the assets are pages; everything else, the build's own
// record and directories included, is a 404 saying where the console is,
// with the security headers.
func TestNotFound(t *testing.T) {
	t.Parallel()
	h := Handler()
	for _, p := range []string{"/nope", "/index.html", "/assets/", "/assets", "/assets/nope.js", "/SOURCES.sha256", "/dist/index.html", "/admin/projects"} {
		resp, body := serve(t, h, "GET", p, nil)
		want := "no console page at " + p + "; open / for the console\n"
		if resp.StatusCode != http.StatusNotFound || body != want {
			t.Errorf("GET %s: %d %q, want 404 %q", p, resp.StatusCode, body, want)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Errorf("GET %s: Content-Type %q", p, ct)
		}
		wantSecurityHeaders(t, "GET "+p, resp)
	}
	resp, _ := serve(t, h, "POST", "/", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: %d Allow %q, want 405 with Allow: GET, HEAD", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// A build without index.html is refused when the handler is made, with
// the fix, rather than serving 404s.
func TestLoadNeedsIndex(t *testing.T) {
	t.Parallel()
	_, err := load(fstest.MapFS{"assets/app.js": {Data: []byte("x")}})
	if err == nil || !strings.Contains(err.Error(), "npm run build") {
		t.Fatalf("load without index.html: %v, want an error naming npm run build", err)
	}
}
