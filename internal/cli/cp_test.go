package cli

import (
	"errors"
	"io/fs"
	"testing"
)

func TestParseLocation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		arg  string
		want location
	}{
		{"file.txt", location{path: "file.txt"}},
		{"/abs/a:b", location{path: "/abs/a:b"}},
		{"./a:b", location{path: "./a:b"}},
		{":data/x", location{remote: true, path: "data/x"}},
		{":", location{remote: true, path: "."}},
		{"abc123:/tmp/y", location{remote: true, session: "abc123", path: "/tmp/y"}},
		{"abc123:~/y", location{remote: true, session: "abc123", path: "y"}},
	} {
		tc.want.arg = tc.arg
		if got := parseLocation(tc.arg); got != tc.want {
			t.Errorf("parseLocation(%q) = %+v, want %+v", tc.arg, got, tc.want)
		}
	}
}

func TestParsePorts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		arg           string
		local, remote int
		ok            bool
	}{
		{"8888:8888", 8888, 8888, true},
		{"0:6006", 0, 6006, true},
		{"6006", 6006, 6006, true},
		{"8888:0", 0, 0, false},
		{"a:1", 0, 0, false},
		{"70000:1", 0, 0, false},
	} {
		l, r, err := parsePorts(tc.arg)
		if (err == nil) != tc.ok || l != tc.local || r != tc.remote {
			t.Errorf("parsePorts(%q) = %d, %d, %v", tc.arg, l, r, err)
		}
	}
}

func TestPathError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&fs.PathError{Op: "open", Path: "x", Err: fs.ErrNotExist}, "s:x: no such file or directory"},
		{fs.ErrPermission, "s:x: permission denied"},
		{errors.New("boom"), "s:x: boom"},
	} {
		if got := pathError("s:x", tc.err).Error(); got != tc.want {
			t.Errorf("pathError(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
