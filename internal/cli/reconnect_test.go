package cli

import (
	"bytes"
	"errors"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

func TestInputLog(t *testing.T) {
	t.Parallel()
	l := newInputLog()
	stop := make(chan struct{})
	close(stop)
	if _, _, ok := l.next(0, stop); ok {
		t.Fatal("next with no input and stop closed returned input")
	}
	l.append([]byte("ls\r"))
	l.append([]byte("pwd\r"))
	if data, end, ok := l.next(0, nil); !ok || string(data) != "ls\rpwd\r" || end != 7 {
		t.Fatalf("next(0) = %q %d %v", data, end, ok)
	}
	// A resume that says the agent has 3 bytes gets what follows them.
	if data, end, ok := l.next(3, nil); !ok || string(data) != "pwd\r" || end != 7 {
		t.Fatalf("next(3) = %q %d %v", data, end, ok)
	}
	// Past inputKept, the oldest keystrokes are dropped, not the newest.
	big := bytes.Repeat([]byte("x"), inputKept)
	l.append(big)
	l.append([]byte("END"))
	data, end, ok := l.next(0, nil)
	if !ok || len(data) != inputKept || !bytes.HasSuffix(data, []byte("xEND")) || end != uint64(7+inputKept+3) {
		t.Fatalf("after overflow: %d bytes ending %q, end %d", len(data), data[max(0, len(data)-4):], end)
	}
}

func TestShellExitError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		exit sdk.ShellExit
		want int // -1: nil
	}{
		{sdk.ShellExit{Status: 0}, -1},
		{sdk.ShellExit{Status: 3}, 3},
		{sdk.ShellExit{Signal: "TERM"}, 143},
		{sdk.ShellExit{Signal: "KILL"}, 137},
	} {
		err := shellExitError(&tc.exit)
		var status exitStatus
		switch {
		case tc.want < 0 && err != nil:
			t.Errorf("%+v: %v, want nil", tc.exit, err)
		case tc.want >= 0 && (!errors.As(err, &status) || int(status) != tc.want):
			t.Errorf("%+v: %v, want exit status %d", tc.exit, err, tc.want)
		}
	}
}
