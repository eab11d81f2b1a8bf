package admission

import (
	"strings"
	"testing"
)

func TestDecide(t *testing.T) {
	t.Parallel()
	pools := []Pool{
		{Type: "t4", Region: "local", Free: 0, Total: 4},
		{Type: "a100", Region: "local", Free: 1, Total: 2},
		{Type: "a100", Region: "west", Free: 2, Total: 2},
	}
	cases := []struct {
		name       string
		req        Request
		snap       Snapshot
		admit      bool
		typ, reg   string
		reason     string
		msgContain string
	}{
		{"disabled", Request{Project: "p"}, Snapshot{GPUEnabled: false, Pools: pools}, false, "", "", ReasonGPUDisabled, "disabled in project p"},
		{"any picks most free", Request{}, Snapshot{GPUEnabled: true, Pools: pools}, true, "a100", "west", "", ""},
		{"type and region", Request{GPUType: "a100", Region: "local"}, Snapshot{GPUEnabled: true, Pools: pools}, true, "a100", "local", "", ""},
		{"full", Request{GPUType: "t4"}, Snapshot{GPUEnabled: true, Pools: pools}, false, "", "", ReasonCapacity, "all 4 t4 GPUs are in use"},
		{"unknown type", Request{GPUType: "h100"}, Snapshot{GPUEnabled: true, Pools: pools}, false, "", "", ReasonUnknownGPU, "choose one of: t4 in local"},
		{"unknown region", Request{GPUType: "t4", Region: "mars"}, Snapshot{GPUEnabled: true, Pools: pools}, false, "", "", ReasonUnknownGPU, "region mars"},
		{"empty inventory", Request{}, Snapshot{GPUEnabled: true}, false, "", "", ReasonUnknownGPU, "inventory is empty"},
	}
	for _, c := range cases {
		d := Decide(c.req, c.snap)
		if d.Admit != c.admit || d.GPUType != c.typ || d.Region != c.reg || d.Reason != c.reason || !strings.Contains(d.Message, c.msgContain) {
			t.Errorf("%s: got %+v", c.name, d)
		}
	}
}
