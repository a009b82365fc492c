package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, floor uint64
		want        int
	}{
		{4 * mib, 16 * mib, 300},  // the next cycle at 16 MiB
		{3 * mib, 16 * mib, 400},  // 433, in steps of 50
		{0, 16 * mib, 1500},       // an empty heap counts as 1 MiB
		{8 * mib, 16 * mib, 100},  // 2 x live is the floor: the default
		{40 * mib, 16 * mib, 100}, // a big heap: the default
		{6 * mib, 16 * mib, 150},  // 166
	} {
		if got := Percent(c.live, c.floor); got != c.want {
			t.Errorf("Percent(%d MiB, %d MiB) = %d, want %d", c.live/mib, c.floor/mib, got, c.want)
		}
	}
}

// gogc reads GOGC (SetGCPercent returns the previous value).
func gogc() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// Started in a test's small heap, GOGC goes up at once and follows the live
// heap after each cycle: back to 100 while a big heap is held; stop puts 100 back.
func TestFollowsTheLiveHeapAndStops(t *testing.T) {
	t.Setenv("GOGC", "") // restored after the test
	os.Unsetenv("GOGC")
	stop := Start(64 << 20)
	t.Cleanup(stop)
	if p := gogc(); p <= 100 {
		t.Fatalf("GOGC %d after Start with a small heap, want more than 100", p)
	}
	big := make([]byte, 48<<20) // live: 2 x 48 MiB is over the floor
	for i := range big {
		big[i] = byte(i)
	}
	testkit.Eventually(t, 10*time.Second, "GOGC back to 100 with a big live heap", func() bool {
		runtime.GC()
		return gogc() == 100
	})
	runtime.KeepAlive(big)
	big = nil
	testkit.Eventually(t, 10*time.Second, "GOGC up again once the big heap is gone", func() bool {
		runtime.GC()
		return gogc() > 100
	})
	stop()
	if p := gogc(); p != 100 {
		t.Errorf("GOGC %d after stop, want 100", p)
	}
}

// A GOGC set in the environment stands.
func TestGOGCInTheEnvironmentStands(t *testing.T) {
	t.Setenv("GOGC", "100")
	stop := Start(64 << 20)
	defer stop()
	if p := gogc(); p != 100 {
		t.Errorf("GOGC %d with GOGC=100 in the environment", p)
	}
}
