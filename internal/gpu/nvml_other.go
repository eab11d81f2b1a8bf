//go:build !(linux && cgo)

package gpu

import "errors"

func discoverNVML() ([]Device, error) {
	return nil, errors.New("nvml needs a linux build with cgo")
}

func utilization(string) (int, error) {
	return 0, errors.New("nvml needs a linux build with cgo")
}
