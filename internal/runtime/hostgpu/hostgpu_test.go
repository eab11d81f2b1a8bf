package hostgpu

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/devgpu/devgpu/internal/runtime"
)

func pool(t *testing.T, spec string) *Pool {
	t.Helper()
	devs, err := Simulated(spec)
	if err != nil {
		t.Fatal(err)
	}
	return NewPool(devs)
}

func TestCapacity(t *testing.T) {
	p := pool(t, "t4:3,a100:2@westus3,t4:1@westus3")
	want := []runtime.Capacity{{Type: "a100", Region: "westus3", Total: 2}, {Type: "t4", Region: "local", Total: 3}, {Type: "t4", Region: "westus3", Total: 1}}
	if got := p.Capacity(); !slices.Equal(got, want) {
		t.Fatalf("Capacity = %v, want %v", got, want)
	}
	// Holding devices does not change the capacity: it counts all.
	if _, err := p.Take("s", runtime.GPURequest{Type: "t4", Region: "local", Count: 2}); err != nil {
		t.Fatal(err)
	}
	if got := p.Capacity(); !slices.Equal(got, want) {
		t.Fatalf("Capacity with devices held = %v, want %v", got, want)
	}
	if got := NewPool(nil).Capacity(); len(got) != 0 {
		t.Fatalf("an empty pool offers %v", got)
	}
}

func TestTakeLowestFirstAndRelease(t *testing.T) {
	p := pool(t, "t4:4,a100:1")
	a, err := p.Take("a", runtime.GPURequest{Type: "t4", Region: "local", Count: 2})
	if err != nil || !slices.Equal(a, []string{"GPU-sim-t4-0", "GPU-sim-t4-1"}) {
		t.Fatalf("Take a = %v, %v", a, err)
	}
	b, err := p.Take("b", runtime.GPURequest{Type: "t4", Count: 1})
	if err != nil || !slices.Equal(b, []string{"GPU-sim-t4-2"}) {
		t.Fatalf("Take b = %v, %v", b, err)
	}
	// Too few free: nothing is taken, and the error says what there is.
	_, err = p.Take("c", runtime.GPURequest{Type: "t4", Region: "local", Count: 2})
	if err == nil || !strings.Contains(err.Error(), "has 4 of them and 1 are free") {
		t.Fatalf("Take c = %v, want an error naming 4 in all and 1 free", err)
	}
	if got := p.Held("c"); got != nil {
		t.Fatalf("a refused Take holds %v", got)
	}
	p.Release("a")
	c, err := p.Take("c", runtime.GPURequest{Type: "t4", Count: 3})
	if err != nil || !slices.Equal(c, []string{"GPU-sim-t4-0", "GPU-sim-t4-1", "GPU-sim-t4-3"}) {
		t.Fatalf("Take c after releasing a = %v, %v", c, err)
	}
	p.Release("nobody") // does nothing
	if got := p.Held("b"); !slices.Equal(got, b) {
		t.Fatalf("b holds %v, want %v", got, b)
	}
}

func TestTakeRefusals(t *testing.T) {
	p := pool(t, "t4:2")
	for _, req := range []runtime.GPURequest{
		{Type: "a100", Count: 1},                  // no such type
		{Type: "t4", Region: "westus3", Count: 1}, // no such region
		{Type: "t4", Count: 3},                    // more than there are
		{Type: "t4", Count: -1},                   // nonsense
	} {
		if ids, err := p.Take("x", req); err == nil {
			t.Errorf("Take(%+v) = %v, want an error", req, ids)
		}
	}
	none, err := p.Take("cpu", runtime.GPURequest{Type: "t4", Count: 0})
	if err != nil || none == nil || len(none) != 0 {
		t.Fatalf("Take of no GPUs = %#v, %v; want an empty list", none, err)
	}
	// A session takes once: a second Take before Release is refused and
	// does not disturb what it holds.
	if _, err := p.Take("s", runtime.GPURequest{Type: "t4", Count: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Take("s", runtime.GPURequest{Type: "t4", Count: 1}); err == nil {
		t.Fatal("a second Take for the same session succeeded")
	}
	if got := p.Held("s"); !slices.Equal(got, []string{"GPU-sim-t4-0"}) {
		t.Fatalf("s holds %v after its second Take was refused", got)
	}
}

// After a restart a runtime holds what its sessions hold; those devices
// are never taken again until released.
func TestHold(t *testing.T) {
	p := pool(t, "t4:3")
	p.Hold("old", []string{"GPU-sim-t4-0", "GPU-sim-t4-2", "GPU-gone"})
	got, err := p.Take("new", runtime.GPURequest{Type: "t4", Count: 1})
	if err != nil || !slices.Equal(got, []string{"GPU-sim-t4-1"}) {
		t.Fatalf("Take beside held devices = %v, %v", got, err)
	}
	if _, err := p.Take("more", runtime.GPURequest{Type: "t4", Count: 1}); err == nil {
		t.Fatal("Take handed out a held device")
	}
	// A device another session holds stays with it.
	p.Hold("thief", []string{"GPU-sim-t4-1"})
	p.Release("thief")
	if got := p.Held("new"); !slices.Equal(got, []string{"GPU-sim-t4-1"}) {
		t.Fatalf("new holds %v after another session claimed its device", got)
	}
	p.Release("old")
	got, err = p.Take("more", runtime.GPURequest{Type: "t4", Count: 2})
	if err != nil || !slices.Equal(got, []string{"GPU-sim-t4-0", "GPU-sim-t4-2"}) {
		t.Fatalf("Take after release = %v, %v", got, err)
	}
}

// Concurrent takers never share a device and never get more than there is.
func TestConcurrentTakes(t *testing.T) {
	p := pool(t, "t4:8")
	var wg sync.WaitGroup
	results := make([][]string, 20)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids, err := p.Take(fmt.Sprintf("s%d", i), runtime.GPURequest{Type: "t4", Count: 1})
			if err == nil {
				results[i] = ids
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, ids := range results {
		for _, id := range ids {
			if seen[id] {
				t.Fatalf("device %s handed out twice", id)
			}
			seen[id] = true
		}
	}
	if len(seen) != 8 {
		t.Fatalf("%d devices handed out, want all 8", len(seen))
	}
}

// Reset replaces what is held: devices of sessions gone are free again,
// those another process gave out are taken, and a device claimed twice
// goes to one session only.
func TestPoolReset(t *testing.T) {
	p := pool(t, "t4:3")
	if _, err := p.Take("a", runtime.GPURequest{Type: "t4", Count: 2}); err != nil {
		t.Fatal(err)
	}
	p.Reset(map[string][]string{"b": {"GPU-sim-t4-1"}, "c": {"GPU-sim-t4-1", "GPU-sim-t4-2"}})
	if got := p.Held("a"); len(got) != 0 {
		t.Errorf("a holds %v after a reset without it", got)
	}
	if got := p.Held("c"); !slices.Equal(got, []string{"GPU-sim-t4-2"}) {
		t.Errorf("c holds %v, want only the device b does not hold", got)
	}
	got, err := p.Take("d", runtime.GPURequest{Type: "t4", Count: 1})
	if err != nil || !slices.Equal(got, []string{"GPU-sim-t4-0"}) {
		t.Fatalf("Take after Reset = %v, %v; want the one free device", got, err)
	}
	if _, err := p.Take("e", runtime.GPURequest{Type: "t4", Count: 1}); err == nil {
		t.Fatal("a fourth device was handed out of three")
	}
}
