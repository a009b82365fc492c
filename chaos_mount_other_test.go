//go:build !linux

package main

import "errors"

func readOnlyMount(string) (func(), error) {
	return nil, errors.New("read-only bind mounts: Linux only")
}
