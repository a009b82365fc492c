//go:build !linux

package httpapi

import (
	"errors"
	"net"
)

// PeerUIDSupported says whether this system can tell which user opened a
// loopback connection. Here it cannot: a loopback API needs a token.
const PeerUIDSupported = false

func peerUID(net.Conn) (int, error) {
	return -1, errors.New("the peer's uid is not known on this system")
}
