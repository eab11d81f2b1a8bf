package sqlstore

import (
	"reflect"
	"testing"
	"testing/fstest"

	"github.com/devgpu/devgpu/sdk"
)

func TestRebind(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`SELECT 1`, `SELECT 1`},
		{`SELECT a FROM t WHERE b = ?`, `SELECT a FROM t WHERE b = $1`},
		{`INSERT INTO t (a, b, c) VALUES (?,?, ?)`, `INSERT INTO t (a, b, c) VALUES ($1,$2, $3)`},
		{`? ? ? ? ? ? ? ? ? ? ?`, `$1 $2 $3 $4 $5 $6 $7 $8 $9 $10 $11`},
	} {
		if got := Rebind(c.in); got != c.want {
			t.Errorf("Rebind(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestMigrations(t *testing.T) {
	file := &fstest.MapFile{Data: []byte("SELECT 1;")}
	for _, c := range []struct {
		name  string
		files []string
		want  []int64 // nil: an error
	}{
		{"none", nil, []int64{}},
		{"numeric order", []string{"0010_later.sql", "0002_b.sql", "0001_init.sql", "README.md"}, []int64{1, 2, 10}},
		{"no number", []string{"0001_init.sql", "init.sql"}, nil},
		{"no name", []string{"0001.sql"}, nil},
		{"zero", []string{"0000_init.sql"}, nil},
		{"same version", []string{"0001_init.sql", "1_again.sql"}, nil},
	} {
		fsys := fstest.MapFS{}
		for _, f := range c.files {
			fsys[f] = file
		}
		ms, err := (&Dialect{Migrations: fsys}).migrations()
		if c.want == nil {
			if err == nil {
				t.Errorf("%s: migrations() = %v, want an error", c.name, ms)
			}
			continue
		}
		got := []int64{}
		for _, m := range ms {
			got = append(got, m.version)
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: versions %v, %v; want %v", c.name, got, err, c.want)
		}
	}
}

func TestEncodeSettings(t *testing.T) {
	empty, nilList := []string{}, []string(nil)
	for _, c := range []struct {
		in   sdk.ProjectSettings
		want string
	}{
		{sdk.ProjectSettings{}, `{}`},
		{sdk.ProjectSettings{GPUTypes: &empty}, `{"gpu_types":[]}`},
		{sdk.ProjectSettings{GPUTypes: &nilList}, `{"gpu_types":[]}`},
		{sdk.ProjectSettings{IdleTimeout: new(sdk.Duration)}, `{"idle_timeout":"0s"}`},
	} {
		ps := c.in
		got, err := encodeSettings(&ps)
		if err != nil || got != c.want {
			t.Errorf("encodeSettings(%+v) = %s, %v; want %s", c.in, got, err, c.want)
		}
	}
	if nilList != nil {
		t.Errorf("encodeSettings changed the caller's list to %v", nilList)
	}
	if got, err := encodePolicy(sdk.OrgPolicy{}); err != nil || got != `{"defaults":{}}` {
		t.Errorf("encodePolicy(zero) = %s, %v", got, err)
	}
}

// TestOldestReader checks how a migration's first line marks it as an
// expand one, and which version is then the oldest a release may know.
func TestOldestReader(t *testing.T) {
	expand := &fstest.MapFile{Data: []byte(compatibleOlder + "\nCREATE TABLE t (id INTEGER);\n")}
	expandCRLF := &fstest.MapFile{Data: []byte(compatibleOlder + "  \r\nSELECT 1;")}
	contract := &fstest.MapFile{Data: []byte("-- drops what the release before stopped using\n" + compatibleOlder + "\nSELECT 1;")}
	for _, c := range []struct {
		name  string
		files fstest.MapFS
		want  int64
	}{
		{"none", fstest.MapFS{}, 0},
		{"all expand", fstest.MapFS{"0001_a.sql": expand, "0002_b.sql": expandCRLF}, 0},
		{"contract last", fstest.MapFS{"0001_a.sql": expand, "0002_b.sql": contract}, 1},
		{"expand after contract", fstest.MapFS{"0001_a.sql": contract, "0002_b.sql": contract, "0003_c.sql": expand, "0004_d.sql": expand}, 1},
		{"mark not on the first line", fstest.MapFS{"0001_a.sql": expand, "0002_b.sql": contract, "0003_c.sql": expand}, 1},
	} {
		ms, err := (&Dialect{Migrations: c.files}).migrations()
		if err != nil {
			t.Fatal(err)
		}
		if got := oldestReader(ms); got != c.want {
			t.Errorf("%s: oldestReader = %d, want %d", c.name, got, c.want)
		}
	}
}
