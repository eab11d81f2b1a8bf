package cli

import (
	"os"
	"time"

	"golang.org/x/term"
)

// resizePoll is how often the console's size is checked: Windows has no
// signal for it.
const resizePoll = 250 * time.Millisecond

// watchResize calls resized whenever the console changes size, until stop
// is called.
func watchResize(resized func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		fd := int(os.Stdout.Fd())
		w, h, _ := term.GetSize(fd)
		t := time.NewTicker(resizePoll)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if nw, nh, err := term.GetSize(fd); err == nil && (nw != w || nh != h) {
					w, h = nw, nh
					resized()
				}
			}
		}
	}()
	return func() { close(done) }
}
