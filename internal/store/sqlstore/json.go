package sqlstore

import (
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/devgpu/devgpu/sdk"
)

// encodeSettings returns settings as stored: JSON, "{}" when nothing is
// set. It sets *ps to what reads back, as norm does for times, and fails
// on a value that would not read back.
//
// A list field that points at a nil slice is stored as an empty list:
// encoding/json would write null for it, which reads back as a nil
// pointer, turning "set to any" into "not set, inherit". A pointer to an
// empty slice needs no help: it travels as [] and reads back as a
// non-nil pointer to an empty, non-nil slice.
func encodeSettings(ps *sdk.ProjectSettings) (string, error) {
	b, err := json.Marshal(emptyLists(*ps))
	if err != nil {
		return "", fmt.Errorf("encode settings: %w", err)
	}
	var back sdk.ProjectSettings
	if err := json.Unmarshal(b, &back); err != nil {
		return "", fmt.Errorf("settings do not read back: %w", err)
	}
	*ps = back
	return string(b), nil
}

// emptyLists returns ps with each pointer to a nil slice replaced by a
// pointer to an empty one. ps is a copy: what the caller's pointers point
// at is left alone.
func emptyLists(ps sdk.ProjectSettings) sdk.ProjectSettings {
	v := reflect.ValueOf(&ps).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Kind() != reflect.Pointer || f.IsNil() || f.Elem().Kind() != reflect.Slice || !f.Elem().IsNil() {
			continue
		}
		empty := reflect.New(f.Type().Elem())
		empty.Elem().Set(reflect.MakeSlice(f.Type().Elem(), 0, 0))
		f.Set(empty)
	}
	return ps
}

// encodePolicy returns the organisation policy as stored; its defaults
// are encoded as encodeSettings does, and it fails on a policy that would
// not read back.
func encodePolicy(p sdk.OrgPolicy) (string, error) {
	p.Defaults = emptyLists(p.Defaults)
	b, err := json.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("encode policy: %w", err)
	}
	if err := json.Unmarshal(b, new(sdk.OrgPolicy)); err != nil {
		return "", fmt.Errorf("policy does not read back: %w", err)
	}
	return string(b), nil
}

// decodeJSON reads a JSON column into v.
func decodeJSON(s string, v any) error {
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return fmt.Errorf("decode JSON column: %w", err)
	}
	return nil
}
