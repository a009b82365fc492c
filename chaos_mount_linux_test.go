package main

import "golang.org/x/sys/unix"

// readOnlyMount makes dir read-only for new opens by a read-only bind mount
// over itself: tests run as root here, where permissions stop no write.
// Descriptors opened before keep writing (to the mount below). undo
// detaches it (lazily: processes may hold files opened through it).
func readOnlyMount(dir string) (undo func(), err error) {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return nil, err
	}
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		return nil, err
	}
	return func() { _ = unix.Unmount(dir, unix.MNT_DETACH) }, nil
}
