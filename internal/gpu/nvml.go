//go:build linux && cgo

package gpu

import (
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// discoverNVML lists devices through libnvidia-ml, loaded at run time, so a
// binary built here still starts on hosts without the driver.
func discoverNVML() ([]Device, error) {
	if ret := nvml.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml init: %s", nvml.ErrorString(ret))
	}
	defer nvml.Shutdown()
	count, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml device count: %s", nvml.ErrorString(ret))
	}
	devs := make([]Device, 0, count)
	for i := range count {
		d, ret := nvml.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("nvml device %d: %s", i, nvml.ErrorString(ret))
		}
		uuid, ret := d.GetUUID()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("nvml device %d uuid: %s", i, nvml.ErrorString(ret))
		}
		name, _ := d.GetName()
		devs = append(devs, Device{ID: uuid, Type: TypeOf(name), Region: DefaultRegion, Name: name})
	}
	return devs, nil
}

var (
	nvmlOnce sync.Once
	nvmlErr  error
)

// utilization reads the device's current GPU utilisation in percent.
// NVML stays initialised for the life of the process after the first call.
func utilization(uuid string) (int, error) {
	nvmlOnce.Do(func() {
		if ret := nvml.Init(); ret != nvml.SUCCESS {
			nvmlErr = fmt.Errorf("nvml init: %s", nvml.ErrorString(ret))
		}
	})
	if nvmlErr != nil {
		return 0, nvmlErr
	}
	d, ret := nvml.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		return 0, fmt.Errorf("nvml device %s: %s", uuid, nvml.ErrorString(ret))
	}
	u, ret := d.GetUtilizationRates()
	if ret != nvml.SUCCESS {
		return 0, fmt.Errorf("nvml utilization of %s: %s", uuid, nvml.ErrorString(ret))
	}
	return int(u.Gpu), nil
}
