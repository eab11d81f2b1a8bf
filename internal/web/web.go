// Package web serves the web console's built pages: web/ holds their
// sources, and `npm run build` there writes dist/, which is committed so
// that `go build` needs no Node. The console is one page, index.html at /,
// with its scripts and styles under /assets/; it routes with the URL's
// fragment (#/admin/projects), so no other path is a page.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"time"
)

//go:embed dist
var dist embed.FS

// Security headers on every answer, pages and errors alike.
//
// The policy allows only the server's own scripts, styles, images and
// connections (fetch, the live view's event stream and the terminal's
// WebSocket are all same-origin). Scripts are strict: no inline script, no
// eval. Styles allow 'unsafe-inline' because xterm.js writes its theme and
// its measurements into <style> elements and style attributes at run time;
// a style cannot run code, and scripts stay strict.
const csp = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
	"font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

var securityHeaders = [][2]string{
	{"Content-Security-Policy", csp},
	{"X-Content-Type-Options", "nosniff"},
	{"Referrer-Policy", "no-referrer"},
	{"X-Frame-Options", "DENY"},
}

// contentTypes names the types of what the build writes, so that they do
// not depend on the host's mime tables.
var contentTypes = map[string]string{
	".html":  "text/html; charset=utf-8",
	".js":    "text/javascript; charset=utf-8",
	".css":   "text/css; charset=utf-8",
	".map":   "application/json",
	".json":  "application/json",
	".txt":   "text/plain; charset=utf-8",
	".svg":   "image/svg+xml",
	".png":   "image/png",
	".ico":   "image/x-icon",
	".woff2": "font/woff2",
}

// file is one served file, read once: embed.FS has no modification times,
// so the ETag, strong, is computed from the content.
type file struct {
	body        []byte
	etag        string
	contentType string
}

// site maps a URL path to its file: "/" to index.html, "/assets/..." to
// the files under dist/assets.
type site map[string]file

// Handler serves the console: / as index.html and /assets/* from the
// embedded build, GET and HEAD, with the security headers, Cache-Control
// no-cache and an ETag (a browser revalidates and gets 304 while the
// binary is the same); anything else is a 404 that says where the console
// is.
func Handler() http.Handler {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // the embed directive guarantees dist/
	}
	s, err := load(sub)
	if err != nil {
		panic(fmt.Sprintf("the embedded web console is broken: %v", err))
	}
	return s
}

// load reads index.html and assets/ from fsys.
func load(fsys fs.FS) (site, error) {
	s := site{}
	index, err := fs.ReadFile(fsys, "index.html")
	if err != nil {
		return nil, fmt.Errorf("read index.html: %w (run `npm run build` in web/)", err)
	}
	s["/"] = newFile("index.html", index)
	err = fs.WalkDir(fsys, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		s["/"+p] = newFile(p, b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read assets: %w", err)
	}
	return s, nil
}

func newFile(name string, b []byte) file {
	sum := sha256.Sum256(b)
	ext := path.Ext(name)
	ct, ok := contentTypes[ext]
	if !ok {
		if ct = mime.TypeByExtension(ext); ct == "" {
			ct = "application/octet-stream"
		}
	}
	return file{body: b, etag: `"` + hex.EncodeToString(sum[:16]) + `"`, contentType: ct}
}

func (s site) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	for _, kv := range securityHeaders {
		h.Set(kv[0], kv[1])
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, fmt.Sprintf("the console's pages are read with GET; %s %s is not served", r.Method, r.URL.Path), http.StatusMethodNotAllowed)
		return
	}
	f, ok := s[r.URL.Path]
	if !ok {
		http.Error(w, fmt.Sprintf("no console page at %s; open / for the console", r.URL.Path), http.StatusNotFound)
		return
	}
	h.Set("Content-Type", f.contentType)
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", f.etag)
	// ServeContent answers If-None-Match with 304, HEAD without a body,
	// and ranges; a zero time sends no Last-Modified.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}
