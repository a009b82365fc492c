package main

import (
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// controllerTimerSlack is the timer slack `run` runs with
// (PR_SET_TIMERSLACK; Linux's default is 50 µs), as the local agent does.
// The controller's work comes from sockets, whose wake-ups slack does not
// delay, and none of its timers needs a precision finer than a
// millisecond; what slack lets the kernel coalesce are the Go runtime's
// short sleeps while it is busy (sysmon's 20 µs polls, a thief's 3 µs
// nap), each a pair of context switches: on the 2-core VM, 40% of the
// controller's context switches per claim and ~15% of its CPU
// (testdata/claimcpu.sh, same-minute A/B).
const controllerTimerSlack = time.Millisecond

// withTimerSlack runs this process again in place (syscall.Exec: the same
// pid, arguments and environment) with the given timer slack, unless it
// has that much already: a thread passes its slack on to the threads it
// starts, and the runtime's own (sysmon's among them) exist before main
// could set it. When anything fails the process goes on as it is.
func withTimerSlack(slack time.Duration) {
	runtime.LockOSThread() // the prctl and the exec on one thread
	defer runtime.UnlockOSThread()
	cur, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil || cur >= int(slack) {
		return
	}
	if unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(slack), 0, 0, 0) != nil {
		return
	}
	_ = syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(cur), 0, 0, 0) // still here: as it was
}
