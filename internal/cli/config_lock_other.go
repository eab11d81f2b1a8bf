//go:build !unix && !windows

package cli

import (
	"os"
	"sync"
)

// configLock: without file locks here, renewals are one at a time within
// this process only.
var configLock sync.Mutex

func tryLockFile(*os.File) (busy bool, err error) { return !configLock.TryLock(), nil }

func unlockFile(*os.File) error { configLock.Unlock(); return nil }
