package state

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Lock holds the state directory's exclusive lock.
type Lock struct{ f *os.File }

// Acquire takes the state directory's lock without waiting: two agents (a
// `run` daemon and a manual `once`) must never apply at the same time.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("state directory %s is in use by another pull-agent process", dir)
	}
	return &Lock{f: f}, nil
}

// Release drops the lock.
func (l *Lock) Release() { _ = l.f.Close() }
