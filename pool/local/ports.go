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

var loopbackPorts = newPortCursor("/proc/sys/net/ipv4/ip_local_port_range")

func newPortCursor(rangeFile string) *portCursor {
	lo, hi := 32768, 60999 // Linux's default
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
	// A random start: an agent that follows a dead one does not walk
	// through the ports its sandboxes' connections may still hold.
	return &portCursor{lo: lo, hi: hi, next: lo + rand.IntN(hi-lo+1)}
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
