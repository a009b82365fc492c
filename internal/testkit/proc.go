package testkit

import (
	"os"
	"strconv"
	"strings"
)

// Alive reports whether process pid runs: it exists and is not a zombie
// (a dead child its parent, or a slow init, has not reaped yet). Linux only:
// it reads /proc.
func Alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which may hold spaces and ')'.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
