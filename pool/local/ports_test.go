package local

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestPortCursor: sandboxes get the ports of the range in turn, skipping
// ports in use, wrapping around, and the kernel's choice only when
// portTries ports in a row are taken; the kernel is not asked to search
// for a free port on each creation (that search grows with the ports
// bound: 26 ms of CPU each with 10,000 sandboxes listening).
func TestPortCursor(t *testing.T) {
	// Four free ports below the ephemeral range, where no test's port 0
	// lands.
	base := 0
	for b := 20000 + 4*(os.Getpid()%1000); b < 32000 && base == 0; b += 4 {
		free := true
		for port := b; port < b+4 && free; port++ {
			ln, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
			if err != nil {
				free = false
				continue
			}
			ln.Close()
		}
		if free {
			base = b
		}
	}
	if base == 0 {
		t.Skip("no four free ports in a row")
	}
	rangeFile := filepath.Join(t.TempDir(), "range")
	write := func(lo, hi int) {
		if err := os.WriteFile(rangeFile, []byte(strconv.Itoa(lo)+"\t"+strconv.Itoa(hi)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(base, base+3)
	p := newPortCursor(rangeFile)
	p.next = base
	// Something else holds base+1: it is skipped.
	held, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(base+1))
	if err != nil {
		t.Skipf("port %d is busy: %v", base+1, err)
	}
	defer held.Close()
	var got []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	listen := func() int {
		t.Helper()
		var ln net.Listener
		err := p.pick(func(port int) error {
			var err error
			ln, err = net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		return ln.Addr().(*net.TCPAddr).Port
	}
	for range 3 {
		got = append(got, listen())
	}
	want := []int{base, base + 2, base + 3}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ports %v, want %v (base+1 held elsewhere)", got, want)
		}
	}
	// The whole range is taken now: after portTries tries, the kernel's choice.
	if port := listen(); port >= base && port <= base+3 {
		t.Fatalf("got port %d inside a full range %d-%d", port, base, base+3)
	}
	// Wrapped around: the range's first port once it is free again.
	lns[0].Close()
	lns = lns[1:]
	p.next = base + 3
	if port := listen(); port != base {
		t.Fatalf("got port %d, want %d: the cursor wraps around to free ports", port, base)
	}
	// A bad range file: Linux's default range.
	write(10, 5)
	if q := newPortCursor(rangeFile); q.lo != 32768 || q.hi != 60999 || q.next < q.lo || q.next > q.hi {
		t.Fatalf("bad range: cursor %+v, want Linux's default", q)
	}
}
