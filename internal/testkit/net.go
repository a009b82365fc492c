package testkit

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"testing"
)

// FreeAddr returns a loopback host:port that was free a moment ago, for a
// process that must be given its address up front (a child's --api flag).
// It lies below the kernel's ephemeral range: a port from there, free when
// a controller was killed, could be taken by any outgoing connection before
// the restarted controller binds it again (TestChaosModal in CI: "bind:
// address already in use" at a restart). Prefer listening on :0 where the
// code under test allows it.
func FreeAddr(t testing.TB) string {
	t.Helper()
	lo := ephemeralLow()
	for range 200 {
		port := 10000 + rand.IntN(max(lo-10000, 1))
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	var lo, hi int
	if err != nil {
		return 32768
	}
	if n, _ := fmt.Sscan(string(b), &lo, &hi); n != 2 || lo <= 10000 {
		return 32768
	}
	return lo
}
