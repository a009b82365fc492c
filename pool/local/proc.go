package local

import (
	"bytes"
	"os"
	"strconv"
	"strings"
)

// procStat reads the state and process group of pid from /proc/<pid>/stat.
func procStat(pid int) (state byte, pgrp int, ok bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// The command name may hold spaces and parentheses: fields start after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(data[i+1:])) // state ppid pgrp ...
	if len(f) < 3 {
		return 0, 0, false
	}
	pgrp, err = strconv.Atoi(f[2])
	return f[0][0], pgrp, err == nil
}

// hasMarker reports whether pid's environment holds the marker of sandbox id.
// Unreadable (another user's, gone) means no.
func hasMarker(pid int, id string) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	return bytes.Contains(append([]byte{0}, data...), []byte("\x00"+envID+"="+id+"\x00"))
}

// live is true for a process that has not exited (zombies have: init may
// take a while to reap an orphaned supervisor).
func live(state byte) bool { return state != 'Z' && state != 'X' && state != 'x' }

// supervisorAlive reports whether the record's supervisor runs and is really
// the one of this sandbox, not a process that reused its pid.
func supervisorAlive(rec record) bool {
	st, pgrp, ok := procStat(rec.Pid)
	return ok && live(st) && pgrp == rec.Pgid && hasMarker(rec.Pid, rec.ID)
}

// groupPids returns the live processes of group pgid that carry the marker of
// sandbox id, in /proc order.
func groupPids(pgid int, id string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, pgrp, ok := procStat(pid); ok && pgrp == pgid && live(st) && hasMarker(pid, id) {
			pids = append(pids, pid)
		}
	}
	return pids
}
