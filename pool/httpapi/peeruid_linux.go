package httpapi

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// PeerUIDSupported says whether this system can tell which user opened a
// loopback connection: on Linux the kernel's socket table knows.
const PeerUIDSupported = true

// errNoSocket means the kernel has no such socket (the client already closed it).
var errNoSocket = errors.New("no such socket in the kernel's table")

// peerUID returns the uid owning the client end of a loopback TCP connection
// accepted by this process: the socket whose local address is c's remote
// address and whose remote address is c's local address. It asks the kernel
// for that one socket (sock_diag, one round trip, no matter how many
// connections are open) and falls back to reading /proc/net/tcp{,6} where
// netlink is not allowed.
func peerUID(c net.Conn) (int, error) {
	local, lok := c.LocalAddr().(*net.TCPAddr)
	remote, rok := c.RemoteAddr().(*net.TCPAddr)
	if !lok || !rok {
		return -1, fmt.Errorf("not a TCP connection: %s", c.RemoteAddr())
	}
	uid, err := sockDiagUID(remote, local)
	if err == nil || errors.Is(err, errNoSocket) {
		return uid, err
	}
	return procNetUID(remote, local)
}

// sockDiagUID looks the socket src->dst up with one NETLINK_SOCK_DIAG
// request (inet_diag_req_v2 with an exact 4-tuple, no dump).
func sockDiagUID(src, dst *net.TCPAddr) (int, error) {
	family, srcIP, dstIP := addrFamily(src.IP, dst.IP)
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return -1, fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	// A reply never takes long; a stuck kernel must not stall accepting.
	tv := unix.Timeval{Usec: 200_000}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)

	const hdrLen, reqLen = 16, 56
	msg := make([]byte, hdrLen+reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], hdrLen+reqLen)
	ne.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(msg[8:], 1) // seq
	req := msg[hdrLen:]
	req[0], req[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(req[4:], 0xffffffff) // every state
	id := req[8:]                     // inet_diag_sockid: ports and addresses in network order
	binary.BigEndian.PutUint16(id[0:], uint16(src.Port))
	binary.BigEndian.PutUint16(id[2:], uint16(dst.Port))
	copy(id[4:20], srcIP)
	copy(id[20:36], dstIP)
	ne.PutUint32(id[40:], 0xffffffff) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], 0xffffffff)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return -1, fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return -1, fmt.Errorf("netlink receive: %w", err)
	}
	if n < hdrLen {
		return -1, errors.New("netlink: short answer")
	}
	switch ne.Uint16(buf[4:]) {
	case unix.NLMSG_ERROR:
		if n >= hdrLen+4 {
			if errno := unix.Errno(-int32(ne.Uint32(buf[hdrLen:]))); errno == unix.ENOENT {
				return -1, errNoSocket
			} else if errno != 0 {
				return -1, fmt.Errorf("sock_diag: %w", errno)
			}
		}
		return -1, errors.New("sock_diag: error answer")
	case unix.SOCK_DIAG_BY_FAMILY:
		// inet_diag_msg: family, state, timer, retrans, sockid (48),
		// expires, rqueue, wqueue, then uid at 64.
		if n < hdrLen+72 {
			return -1, errors.New("sock_diag: short message")
		}
		return int(ne.Uint32(buf[hdrLen+64:])), nil
	}
	return -1, fmt.Errorf("sock_diag: unexpected message type %d", ne.Uint16(buf[4:]))
}

// addrFamily gives the family of a connection and its two addresses as the
// kernel stores them (4 bytes for IPv4, 16 for IPv6).
func addrFamily(a, b net.IP) (uint8, net.IP, net.IP) {
	if a4, b4 := a.To4(), b.To4(); a4 != nil && b4 != nil {
		return unix.AF_INET, a4, b4
	}
	return unix.AF_INET6, a.To16(), b.To16()
}

// procNetUID finds the socket src->dst in /proc/net/tcp or tcp6.
func procNetUID(src, dst *net.TCPAddr) (int, error) {
	family, srcIP, dstIP := addrFamily(src.IP, dst.IP)
	path := "/proc/net/tcp"
	if family == unix.AF_INET6 {
		path = "/proc/net/tcp6"
	}
	local := []byte(procAddr(srcIP, src.Port))
	remote := []byte(procAddr(dstIP, dst.Port))
	f, err := os.Open(path)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 8 || !bytes.Equal(fields[1], local) || !bytes.Equal(fields[2], remote) {
			continue
		}
		uid, err := strconv.Atoi(string(fields[7]))
		if err != nil {
			return -1, fmt.Errorf("%s: uid %q", path, fields[7])
		}
		return uid, nil
	}
	if err := sc.Err(); err != nil {
		return -1, err
	}
	return -1, errNoSocket
}

// procAddr formats ip:port as /proc/net/tcp prints it: each 32-bit word of
// the address in the machine's byte order, in hex, then the port.
func procAddr(ip net.IP, port int) string {
	var b []byte
	for i := 0; i+4 <= len(ip); i += 4 {
		b = fmt.Appendf(b, "%08X", binary.NativeEndian.Uint32(ip[i:]))
	}
	return fmt.Sprintf("%s:%04X", b, port)
}
