//go:build unix

package pool

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// processGone reports that no process runs with this pid: none has it
// (signal 0 checks without sending; EPERM is another user's, alive), or it
// is a zombie that its parent has not reaped yet (Linux's /proc says so; a
// controller killed with -9 under a slow reaper stays one for a while).
var processGone = func(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist) && procMounted()
	}
	// "pid (comm) S ...": the state follows the last ')' (comm may hold one).
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] == 'Z' || stat[i+2] == 'X'
	}
	return false
}

func procMounted() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}

// NodeID names this machine's current boot and this process's pid
// namespace ("<boot id>/pid:[4026531836]"): where a pid means one process.
// "" when /proc cannot tell (then no holder is ever taken for dead).
var NodeID = sync.OnceValue(func() string {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(boot)) + "/" + ns
})
