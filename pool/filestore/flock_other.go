//go:build !unix

package filestore

import (
	"errors"
	"os"
)

var errNoFlock = errors.New("no flock on this system")

// Without flock(2) here, every lock goes through waitLock.
func tryFlock(*os.File, bool) (bool, error) { return false, nil }

func unlock(*os.File) error { return errNoFlock }
