package local

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// portCursor picks the loopback ports of sandboxes. Asked for port 0, the
// kernel searches its ephemeral range for a free port, and that search
// grows with the ports already bound: with 10,000 built-in sandboxes
// listening, one bind cost ~26 ms of CPU (2 ms with 5,000, 0.05 ms with
// 1,000), most of a creation's cost in the agent, so a claim's backfill
// cost more with more claimed sandboxes running (issue 9). Binding the
// port after the last one handed out costs a lookup instead: sandboxes end
// in about the order they were made, so the ports ahead of the cursor are
// mostly free again. Ports come from the same range the kernel would use.
type portCursor struct {
	mu           sync.Mutex
	lo, hi, next int
}

// portRangeFile is the kernel's ephemeral port range: the ports it picks
// for a connect() or a bind to port 0.
const portRangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

var loopbackPorts = newPortCursor(portRangeFile)

func newPortCursor(rangeFile string) *portCursor {
	lo, hi := ephemeralRange(rangeFile)
	return cursorOver(lo, hi)
}

// ephemeralRange reads the kernel's ephemeral range from rangeFile.
func ephemeralRange(rangeFile string) (lo, hi int) {
	lo, hi = 32768, 60999 // Linux's default
	if b, err := os.ReadFile(rangeFile); err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 {
			l, err1 := strconv.Atoi(f[0])
			h, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && 0 < l && l < h && h < 65536 {
				lo, hi = l, h
			}
		}
	}
	return lo, hi
}

// cursorOver is a cursor over the ports lo..hi. A random start: an agent
// that follows a dead one does not walk through the ports its sandboxes'
// connections may still hold, nor in step with another pool's agent.
func cursorOver(lo, hi int) *portCursor {
	return &portCursor{lo: lo, hi: hi, next: lo + rand.IntN(hi-lo+1)}
}

// cmdPorts picks the ports of --cmd workloads. Such a port is free when
// the agent hands it out, but the workload binds it only once started
// (python's http.server: 0.1-4 s later); a port of the ephemeral range may
// be taken meanwhile by any connect() on the machine (a health check's, a
// client's) or any bind to port 0 (every test server), and the workload
// then fails, "Address already in use". Outside that range, only a bind
// to that very port can take it. The range above the ephemeral one is
// preferred (services listen below it); with no room on either side, the
// ephemeral range as before.
var cmdPorts = newCmdPortCursor(portRangeFile)

const (
	cmdPortsMin  = 1024  // the fewest ports a range outside the ephemeral one must have
	cmdPortFloor = 10000 // below the ephemeral range, not under this (services' ports)
)

func newCmdPortCursor(rangeFile string) *portCursor {
	lo, hi := ephemeralRange(rangeFile)
	switch {
	case 65535-hi >= cmdPortsMin:
		return cursorOver(hi+1, 65535)
	case lo-cmdPortFloor >= cmdPortsMin:
		return cursorOver(cmdPortFloor, lo-1)
	}
	return cursorOver(lo, hi)
}

// cmdPort returns a port for a --cmd workload to bind: free on every
// address, so that the workload's bind (127.0.0.1, 0.0.0.0 or, as
// python's http.server does, :: for both stacks) finds it free.
func cmdPort(c *portCursor) (int, error) {
	port := 0
	err := c.pick(func(p int) error {
		if p == 0 { // the range is full: the kernel's choice, as before
			f, q, err := bindLoopback()
			if err != nil {
				return err
			}
			f.Close()
			port = q
			return nil
		}
		if err := freeEverywhere(p); err != nil {
			return err
		}
		port = p
		return nil
	})
	return port, err
}

// freeEverywhere binds port on every address, IPv6 and IPv4 in one socket
// (IPv4 alone where there is no IPv6), and lets it go: nil when the port
// is free on all of them.
func freeEverywhere(port int) error {
	if fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0); err == nil {
		err = syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 0)
		if err == nil {
			err = syscall.Bind(fd, &syscall.SockaddrInet6{Port: port})
		}
		syscall.Close(fd)
		if err == nil || errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EACCES) {
			return err
		}
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	return syscall.Bind(fd, &syscall.SockaddrInet4{Port: port})
}

// take hands out the next port of the range, wrapping around.
func (p *portCursor) take() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	port := p.next
	if p.next++; p.next > p.hi {
		p.next = p.lo
	}
	return port
}

// portTries bounds the ports tried in a row before asking the kernel.
const portTries = 64

// pick calls bind with the next ports until one is free (bind returns an
// error that is not EADDRINUSE or EACCES: that one is returned), and with
// port 0 (the kernel's choice) after portTries ports in use.
func (p *portCursor) pick(bind func(port int) error) error {
	for range portTries {
		err := bind(p.take())
		if !errors.Is(err, syscall.EADDRINUSE) && !errors.Is(err, syscall.EACCES) {
			return err
		}
	}
	return bind(0)
}

// listenLoopback listens on a free port of 127.0.0.1 with lc.
func listenLoopback(lc *net.ListenConfig) (net.Listener, error) {
	var ln net.Listener
	err := loopbackPorts.pick(func(port int) error {
		var err error
		ln, err = lc.Listen(context.Background(), "tcp4", "127.0.0.1:"+strconv.Itoa(port))
		return err
	})
	return ln, err
}

// bindLoopback returns a TCP socket bound to a free port on 127.0.0.1 but not
// listening, and the port.
func bindLoopback() (*os.File, int, error) {
	var (
		fd   int
		port int
	)
	err := loopbackPorts.pick(func(p int) error {
		var err error
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err = syscall.Bind(fd, &syscall.SockaddrInet4{Port: p, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			syscall.Close(fd)
			return err
		}
		port = p
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if port == 0 {
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			syscall.Close(fd)
			return nil, 0, err
		}
		port = sa.(*syscall.SockaddrInet4).Port
	}
	return os.NewFile(uintptr(fd), "listener"), port, nil
}
