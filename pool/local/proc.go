package local

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// procState reads the state letter of pid from /proc/<pid>/stat.
func procState(pid int) (byte, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name may hold spaces and parentheses: fields start after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return 0, false
	}
	return data[i+2], true
}

// live is true for a process that has not exited (a zombie has).
func live(pid int) bool {
	st, ok := procState(pid)
	return ok && st != 'Z' && st != 'X' && st != 'x'
}

// markedPids returns the live processes whose environment holds every one of
// marks ("KEY=value"). A process keeps the environment it was started with
// even after setsid or a double fork, which is what makes the mark a way to
// find a sandbox's escapees. Unreadable environments (another user's, gone,
// zombies) do not match.
func markedPids(marks ...string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	needles := make([][]byte, len(marks))
	for i, m := range marks {
		needles[i] = []byte("\x00" + m + "\x00")
	}
	self := os.Getpid()
	var pids []int
	buf := []byte{0}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || len(data) == 0 {
			continue
		}
		buf = append(append(buf[:1], data...), 0)
		all := true
		for _, n := range needles {
			if !bytes.Contains(buf, n) {
				all = false
				break
			}
		}
		if all && live(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killMarked sends sig to every live process carrying marks and says how
// many it found.
func killMarked(sig syscall.Signal, marks ...string) int {
	pids := markedPids(marks...)
	for _, pid := range pids {
		_ = syscall.Kill(pid, sig)
	}
	return len(pids)
}
