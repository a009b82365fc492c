package claimload

import (
	"crypto/sha256"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// SpeedMB is how much Speed hashes: enough for ~100 ms on a core of the
// machines this runs on, short enough to run at a run's start and end.
const SpeedMB = 256

// Speed is how long one core takes for a fixed task (SHA-256 of SpeedMB MiB,
// in 1 MiB pieces), the median of three: the same binary on the same
// machine takes the same time unless the machine is slower now (a busy
// host, CPU steal, a lower clock). Read beside latency figures, it tells a
// slow minute from a slow build.
func Speed() time.Duration {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	var took []time.Duration
	for range 3 {
		start := time.Now()
		for range SpeedMB {
			sum := sha256.Sum256(buf)
			buf[0] = sum[0]
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	return took[1]
}

// CPUTimes is /proc/stat's first line: the whole machine's time in ticks.
type CPUTimes struct{ Total, Idle, Steal int64 }

// ReadCPUTimes reads /proc/stat.
func ReadCPUTimes() (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return CPUTimes{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var t CPUTimes
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return CPUTimes{}, fmt.Errorf("/proc/stat: %w", err)
		}
		if i >= 8 { // guest time is counted in user time already
			break
		}
		t.Total += v
		switch i {
		case 3, 4: // idle, iowait
			t.Idle += v
		case 7:
			t.Steal += v
		}
	}
	return t, nil
}
