package filestore

import (
	"os"

	"golang.org/x/sys/unix"
)

// replace puts tmp in place of path atomically. Exchanging the two names,
// instead of renaming over, keeps the old inode as the next temp file:
// creating a file costs a few hundred microseconds on ext4 while overwriting
// one costs a few, and this is the claim's hot path.
func replace(tmp, path string) error {
	if unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE) == nil {
		return nil
	}
	// No file yet to exchange with, or a file system without exchange.
	return os.Rename(tmp, path)
}
