package testkit

import (
	"net"
	"strconv"
	"testing"
)

// FreeAddr's ports lie below the ephemeral range, where no outgoing
// connection takes them between a controller's kill and its restart.
func TestFreeAddrIsOutsideTheEphemeralRange(t *testing.T) {
	for range 20 {
		addr := FreeAddr(t)
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		if port < 10000 || port >= ephemeralLow() {
			t.Fatalf("FreeAddr gave %s: port outside 10000..%d", addr, ephemeralLow()-1)
		}
	}
}
