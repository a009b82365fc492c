package testkit

import (
	"net"
	"testing"
)

// FreeAddr returns a loopback host:port that was free a moment ago, for a
// process that must be given its address up front (a child's --api flag).
// Another process may take it meanwhile: prefer listening on :0 where the
// code under test allows it.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
