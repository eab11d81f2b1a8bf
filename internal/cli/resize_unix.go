//go:build !windows

package cli

import (
	"os"
	"os/signal"
	"syscall"
)

// watchResize calls resized whenever the terminal changes size (SIGWINCH),
// until stop is called.
func watchResize(resized func()) (stop func()) {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-winch:
				resized()
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(winch)
		close(done)
	}
}
