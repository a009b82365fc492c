package local

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// freePorts returns the first of four free ports in a row below the
// ephemeral range, where no test's port 0 lands.
func freePorts(t *testing.T) int {
	t.Helper()
	for b := 20000 + 4*(os.Getpid()%1000); b < 32000; b += 4 {
		free := true
		for port := b; port < b+4 && free; port++ {
			free = freeEverywhere(port) == nil
		}
		if free {
			return b
		}
	}
	t.Skip("no four free ports in a row")
	return 0
}

// TestPortCursor: sandboxes get the ports of the range in turn, skipping
// ports in use, wrapping around, and the kernel's choice only when
// portTries ports in a row are taken; the kernel is not asked to search
// for a free port on each creation (that search grows with the ports
// bound: 26 ms of CPU each with 10,000 sandboxes listening).
func TestPortCursor(t *testing.T) {
	base := freePorts(t)
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

// TestCmdPortsOutsideTheEphemeralRange: a --cmd workload's port, free when
// handed out and bound by the workload later, is one that no connect() and
// no bind to port 0 on the machine can take meanwhile ("Address already in
// use"): outside the kernel's ephemeral range, above it where there is
// room, else below it, else (no room) the ephemeral range as before.
func TestCmdPortsOutsideTheEphemeralRange(t *testing.T) {
	rangeFile := filepath.Join(t.TempDir(), "range")
	for _, tc := range []struct{ lo, hi, wantLo, wantHi int }{
		{32768, 60999, 61000, 65535},
		{40000, 65000, cmdPortFloor, 39999},
		{1024, 65535, 1024, 65535},
	} {
		if err := os.WriteFile(rangeFile, []byte(fmt.Sprintf("%d\t%d\n", tc.lo, tc.hi)), 0o600); err != nil {
			t.Fatal(err)
		}
		c := newCmdPortCursor(rangeFile)
		if c.lo != tc.wantLo || c.hi != tc.wantHi || c.next < c.lo || c.next > c.hi {
			t.Errorf("ephemeral range %d-%d: --cmd ports %d-%d (next %d), want %d-%d", tc.lo, tc.hi, c.lo, c.hi, c.next, tc.wantLo, tc.wantHi)
		}
	}
	lo, hi := ephemeralRange(portRangeFile)
	if 65535-hi >= cmdPortsMin || lo-cmdPortFloor >= cmdPortsMin {
		for range 100 {
			port, err := cmdPort(cmdPorts)
			if err != nil {
				t.Fatal(err)
			}
			if port >= lo && port <= hi {
				t.Fatalf("--cmd port %d is in this machine's ephemeral range %d-%d", port, lo, hi)
			}
		}
	}
}

// TestCmdPortFreeOnEveryAddress: a port some socket holds on another
// address than 127.0.0.1 (127.0.0.2, ::1) is not handed out: the workload
// may bind every address (python's http.server binds :: for both stacks).
func TestCmdPortFreeOnEveryAddress(t *testing.T) {
	base := freePorts(t)
	held := []string{"127.0.0.2:" + strconv.Itoa(base), "[::1]:" + strconv.Itoa(base+1)}
	for _, addr := range held {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("cannot hold %s: %v", addr, err)
		}
		defer ln.Close()
	}
	c := cursorOver(base, base+3)
	c.next = base
	port, err := cmdPort(c)
	if err != nil {
		t.Fatal(err)
	}
	if port != base+2 {
		t.Fatalf("port %d handed out, want %d (%v held)", port, base+2, held)
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port)) // as python's http.server binds
	if err != nil {
		t.Fatalf("the workload's bind of the port handed out: %v", err)
	}
	ln.Close()
}
