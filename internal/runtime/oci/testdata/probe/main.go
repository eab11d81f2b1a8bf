// Command probe tries, inside a session, the system calls a session must
// not have, and prints one line per call: its name and "ok" or the error
// name (such as EPERM). The oci runtime's tests copy it, statically linked,
// into their image.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	calls := map[string]func() error{
		// A Go program has threads, which unshare(CLONE_NEWUSER) refuses:
		// start a child in a new user namespace instead.
		"userns": func() error {
			cmd := exec.Command("/proc/self/exe", "child")
			cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER}
			err := cmd.Run()
			var errno syscall.Errno
			if errors.As(err, &errno) {
				return unix.Errno(errno)
			}
			return err
		},
		"unshare-mnt": func() error { return unix.Unshare(unix.CLONE_NEWNS) },
		"keyctl": func() error {
			_, err := unix.KeyctlInt(unix.KEYCTL_GET_KEYRING_ID, unix.KEY_SPEC_USER_KEYRING, 0, 0, 0)
			return err
		},
		"add_key": func() error {
			_, err := unix.AddKey("user", "devgpu-probe", []byte("x"), unix.KEY_SPEC_PROCESS_KEYRING)
			return err
		},
		"io_uring_setup": func() error {
			var params [120]byte // struct io_uring_params
			fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params[0])), 0)
			if errno != 0 {
				return errno
			}
			unix.Close(int(fd))
			return nil
		},
		"bpf": func() error {
			// BPF_MAP_CREATE of a 1-entry array map.
			attr := [5]uint32{2 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1, 0}
			fd, _, errno := unix.Syscall(unix.SYS_BPF, 0, uintptr(unsafe.Pointer(&attr[0])), unsafe.Sizeof(attr))
			if errno != 0 {
				return errno
			}
			unix.Close(int(fd))
			return nil
		},
		"mount": func() error { return unix.Mount("tmpfs", "/tmp", "tmpfs", 0, "") },
	}
	if len(os.Args) == 2 && os.Args[1] == "child" {
		return
	}
	if len(os.Args) == 2 && os.Args[1] == "hog" {
		// Allocate and touch memory until the OOM killer ends it.
		var hog [][]byte
		for {
			b := make([]byte, 16<<20)
			for i := range b {
				b[i] = 1
			}
			hog = append(hog, b)
		}
	}
	names := os.Args[1:]
	if len(names) == 0 {
		names = []string{"userns", "unshare-mnt", "keyctl", "add_key", "io_uring_setup", "bpf", "mount"}
	}
	for _, name := range names {
		// keysearch:DESC looks for a "user" key DESC in the caller's user
		// keyring.
		if desc, ok := strings.CutPrefix(name, "keysearch:"); ok {
			name = "keysearch"
			calls[name] = func() error {
				_, err := unix.KeyctlSearch(unix.KEY_SPEC_USER_KEYRING, "user", desc, 0)
				return err
			}
		}
		call, ok := calls[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "probe: no call %q\n", name)
			os.Exit(2)
		}
		if err := call(); err != nil {
			errno, _ := err.(unix.Errno)
			fmt.Printf("%s %s\n", name, unix.ErrnoName(errno))
		} else {
			fmt.Printf("%s ok\n", name)
		}
	}
}
