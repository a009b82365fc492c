//go:build unix

package httpapi

import (
	"context"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watchAfter is how long a claim runs before its connection is watched: a
// warm claim answers well within it and never pays for a watch.
const watchAfter = 2 * time.Millisecond

// watchesStarted counts the watches that started, for tests.
var watchesStarted atomic.Int64

// clientWatch notices, while a claim runs, that its client closed the
// connection: fasthttp reads nothing while a handler runs (net/http reads
// in the background for every request to learn it).
type clientWatch struct {
	t    *time.Timer
	c    *guardConn
	done chan struct{} // closed when the watch, once started, has ended
}

// watchClient starts watching c after watchAfter; cancel ends the claim
// with errClientGone when the client has gone. Call stop before the
// connection is used again.
func watchClient(c *guardConn, cancel context.CancelCauseFunc) *clientWatch {
	if c == nil {
		return nil
	}
	w := &clientWatch{c: c, done: make(chan struct{})}
	w.t = time.AfterFunc(watchAfter, func() {
		defer close(w.done)
		watchesStarted.Add(1)
		if clientGone(c) {
			cancel(errClientGone)
		}
	})
	return w
}

// stop ends the watch and returns once it no longer touches the connection.
func (w *clientWatch) stop() {
	if w == nil || w.t.Stop() {
		return
	}
	// Started: a read deadline in the past wakes it (the server sets its
	// own deadline before it reads the next request).
	_ = w.c.Conn.SetReadDeadline(time.Unix(1, 0))
	<-w.done
}

// clientGone waits until c is readable, and is true when that is because
// the client closed it (end of file or an error), not because it sent
// more; it gives up, false, at the connection's read deadline. It only
// peeks: what the client sent stays for the server to read.
func clientGone(c *guardConn) bool {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var gone bool
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			return false // nothing yet: wait until readable
		}
		gone = n == 0 || err != nil
		return true
	})
	return err == nil && gone
}
