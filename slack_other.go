//go:build !linux

package main

import "time"

const controllerTimerSlack = time.Millisecond

// withTimerSlack does nothing where there is no PR_SET_TIMERSLACK.
func withTimerSlack(time.Duration) {}
