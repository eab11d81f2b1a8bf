//go:build !linux

package image

import (
	"context"
	"io"
)

type extractor struct{}

func newExtractor(string) (*extractor, error)             { return nil, errNotLinux }
func (*extractor) Close() error                           { return nil }
func (*extractor) apply(context.Context, io.Reader) error { return errNotLinux }
func (*extractor) finish() error                          { return errNotLinux }
