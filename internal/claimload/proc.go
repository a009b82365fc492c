package claimload

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every Linux ABI Go runs on.
const clockTick = 100

// PoolCPU sums the CPU time (user + system, their reaped children's included)
// of every live process of one pool: the process root and its descendants,
// and any process whose command line, environment, working directory or
// open files name stateDir (a detached local agent that outlived its
// parent is found that way, whatever it is called). The difference of two
// readings is what the pool's processes spent between them: a process that
// ended and was reaped by another pool process is in that one's children's
// time, so nothing is counted twice. It returns milliseconds and the pids.
//
// A live process counts to the nanosecond (the run times of its live
// threads, /proc/<pid>/task/*/schedstat) plus its reaped children's ticks:
// /proc/<pid>/stat counts in 10 ms ticks, an error of up to 10 ms per
// process and reading, as much as a grow of 50 sandboxes costs in a few
// creations. A thread that ended takes its time with it (Go ends one only
// when a goroutine locked to it exits); without schedstat, ticks it is.
func PoolCPU(stateDir string, root int) (ms float64, pids []int, err error) {
	stateDir, err = filepath.Abs(stateDir)
	if err != nil {
		return 0, nil, err
	}
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, nil, err
	}
	type proc struct {
		ppid       int
		ticks      int64 // its own and its reaped children's
		childTicks int64 // its reaped children's
	}
	procs := map[int]proc{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		ppid, ticks, child, err := readStat(pid)
		if err != nil {
			continue // gone meanwhile
		}
		procs[pid] = proc{ppid, ticks, child}
	}
	socks := unixSocketsUnder(stateDir)
	isPool := func(pid int) bool {
		for p, hops := pid, 0; p > 1 && hops < 64; hops++ {
			if p == root {
				return true
			}
			p = procs[p].ppid
		}
		return namesDir(pid, stateDir, socks)
	}
	var ns int64
	for pid, p := range procs {
		if isPool(pid) {
			if run, ok := threadsRunNS(pid); ok {
				ns += run + p.childTicks*1e9/clockTick
			} else {
				ns += p.ticks * 1e9 / clockTick
			}
			pids = append(pids, pid)
		}
	}
	return float64(ns) / 1e6, pids, nil
}

// threadsRunNS sums the time on CPU of a process's live threads, in ns.
func threadsRunNS(pid int) (int64, bool) {
	dir := fmt.Sprintf("/proc/%d/task/", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil || len(tasks) == 0 {
		return 0, false
	}
	var ns int64
	for _, t := range tasks {
		b, err := os.ReadFile(dir + t.Name() + "/schedstat")
		if err != nil {
			continue // ended meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, false
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		ns += v
	}
	return ns, true
}

// readStat returns a process's parent, utime+stime+cutime+cstime and
// cutime+cstime, in ticks.
func readStat(pid int) (ppid int, ticks, childTicks int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parens
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is state (field 3); ppid is field 4, utime..cstime fields 14..17.
	if len(f) < 15 {
		return 0, 0, 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ppid, _ = strconv.Atoi(f[1])
	for j, k := range f[11:15] {
		v, _ := strconv.ParseInt(k, 10, 64)
		ticks += v
		if j >= 2 {
			childTicks += v
		}
	}
	return ppid, ticks, childTicks, nil
}

// unixSocketsUnder returns the inodes of unix sockets bound under dir, as
// /proc/<pid>/fd shows them ("socket:[inode]").
func unixSocketsUnder(dir string) map[string]bool {
	out := map[string]bool{}
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return out
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		// Num RefCount Protocol Flags Type St Inode Path
		if len(f) >= 8 && under(f[7], dir) {
			out["socket:["+f[6]+"]"] = true
		}
	}
	return out
}

func namesDir(pid int, dir string, socks map[string]bool) bool {
	base := fmt.Sprintf("/proc/%d/", pid)
	for _, f := range []string{"cmdline", "environ"} {
		if b, err := os.ReadFile(base + f); err == nil && strings.Contains(string(b), dir) {
			return true
		}
	}
	if l, err := os.Readlink(base + "cwd"); err == nil && under(l, dir) {
		return true
	}
	fds, err := os.ReadDir(base + "fd")
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if l, err := os.Readlink(base + "fd/" + fd.Name()); err == nil && (under(l, dir) || socks[l]) {
			return true
		}
	}
	return false
}

func under(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// monotonic is CLOCK_MONOTONIC in seconds, the clock of `perf record -k
// CLOCK_MONOTONIC` (0 where it cannot be read).
func monotonic() float64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}
