package claimload

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
		ppid  int
		ticks int64
	}
	procs := map[int]proc{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		ppid, ticks, err := readStat(pid)
		if err != nil {
			continue // gone meanwhile
		}
		procs[pid] = proc{ppid, ticks}
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
	var ticks int64
	for pid, p := range procs {
		if isPool(pid) {
			ticks += p.ticks
			pids = append(pids, pid)
		}
	}
	return float64(ticks) * 1000 / clockTick, pids, nil
}

// readStat returns a process's parent and utime+stime+cutime+cstime in ticks.
func readStat(pid int) (ppid int, ticks int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parens
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is state (field 3); ppid is field 4, utime..cstime fields 14..17.
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ppid, _ = strconv.Atoi(f[1])
	for _, k := range f[11:15] {
		v, _ := strconv.ParseInt(k, 10, 64)
		ticks += v
	}
	return ppid, ticks, nil
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
