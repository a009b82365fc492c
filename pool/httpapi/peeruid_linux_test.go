package httpapi

import (
	"net"
	"os"
	"testing"
)

// Both ways of reading the kernel's socket table find the client's uid, on
// IPv4 and IPv6 loopback.
func TestPeerUIDBothWays(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Logf("%s: %v (skipped)", addr, err)
			continue
		}
		defer ln.Close()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close()
		local, remote := server.LocalAddr().(*net.TCPAddr), server.RemoteAddr().(*net.TCPAddr)
		if uid, err := sockDiagUID(remote, local); err != nil || uid != os.Getuid() {
			t.Errorf("%s: sock_diag: uid %d, %v; want %d", addr, uid, err, os.Getuid())
		}
		if uid, err := procNetUID(remote, local); err != nil || uid != os.Getuid() {
			t.Errorf("%s: /proc/net: uid %d, %v; want %d", addr, uid, err, os.Getuid())
		}
		// The server's own end is not the peer: the lookup is directional.
		if _, err := procNetUID(&net.TCPAddr{IP: remote.IP, Port: 1}, local); err != errNoSocket {
			t.Errorf("%s: /proc/net found a socket that does not exist: %v", addr, err)
		}
		if _, err := sockDiagUID(&net.TCPAddr{IP: remote.IP, Port: 1}, local); err != errNoSocket {
			t.Errorf("%s: sock_diag found a socket that does not exist: %v", addr, err)
		}
	}
}
