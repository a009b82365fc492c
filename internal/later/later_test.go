package later

import (
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// Arms made before the function runs share one run; an Arm after it ran
// arms it again.
func TestOneRunForTheArmsBeforeIt(t *testing.T) {
	var mu sync.Mutex
	runs := 0
	var f *Flush
	f = New(20*time.Millisecond, func() {
		mu.Lock()
		defer mu.Unlock()
		f.Ran()
		runs++
	})
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return runs
	}
	mu.Lock()
	for range 10 {
		f.Arm()
	}
	mu.Unlock()
	testkit.Eventually(t, 5*time.Second, "the first run", func() bool { return count() >= 1 })
	time.Sleep(60 * time.Millisecond) // three delays: a second run would have come
	if n := count(); n != 1 {
		t.Fatalf("%d runs for the arms of one spell, want 1", n)
	}
	mu.Lock()
	f.Arm()
	mu.Unlock()
	testkit.Eventually(t, 5*time.Second, "a run for the arm after the first", func() bool { return count() == 2 })
}
