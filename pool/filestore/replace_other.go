//go:build !linux

package filestore

import "os"

// replace puts tmp in place of path atomically.
func replace(tmp, path string) error { return os.Rename(tmp, path) }
