package pool

import (
	"bufio"
	"container/list"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// loopProber runs health GETs to plain-HTTP sandboxes on this machine (the
// local backend's) on the calling goroutine, over connections it keeps
// alive. net/http's Transport starts a dialing goroutine and a reader and a
// writer goroutine per connection and hands every request between them:
// for a probe to a new sandbox that was most of the controller's cost of a
// creation after the agent's answer. The request and the answer are plain
// HTTP/1.1 all the same (net/http parses the answer).
type loopProber struct {
	clk    clockwork.Clock
	dialer net.Dialer

	mu       sync.Mutex // guards the fields below; never held across I/O
	idle     map[string][]*list.Element
	lru      list.List // of *probeConn, least recently used first
	sweeping bool
}

type probeConn struct {
	host string
	c    net.Conn
	used time.Time
}

// probeBufs lends a probe its read buffer for the time of one exchange: a
// kept connection holds none while it idles (one per pooled sandbox), and
// an answer is read whole within the exchange (keep requires nothing left
// buffered). 1 KiB holds a small answer in one read; a longer header line
// or body is read in pieces.
var probeBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 1024) }}

// As net/http's Transport in NewHealthClient: two idle connections per
// sandbox, a bounded total, closed after probeIdleFor unused.
const (
	probeIdlePerHost = 2
	probeIdleMax     = 4096
	probeIdleFor     = 90 * time.Second
	probeBodyMax     = 64 << 10
)

func newLoopProber(clk clockwork.Clock) *loopProber {
	// No TCP keep-alive on loopback: a peer cannot vanish unseen.
	return &loopProber{clk: clk, dialer: net.Dialer{KeepAlive: -1}, idle: map[string][]*list.Element{}}
}

// target says whether raw is a URL this prober takes (http, a loopback
// address and port, no user info), and returns its host and request URI.
func (p *loopProber) target(raw string) (host, uri string, ok bool) {
	if p == nil || !strings.HasPrefix(raw, "http://") {
		return "", "", false
	}
	u, err := url.Parse(raw)
	if err != nil || u.User != nil || u.Port() == "" {
		return "", "", false
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil || !ip.IsLoopback() {
		return "", "", false
	}
	return u.Host, u.RequestURI(), true
}

var probeGet = &http.Request{Method: http.MethodGet}

// check GETs uri from host once. A kept connection that the sandbox closed
// meanwhile (its answer never starts) is retried once on a new one, as the
// Transport retries an idempotent request.
func (p *loopProber) check(ctx context.Context, host, uri string, h *Health) error {
	req := []byte("GET " + uri + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: sandboxpool-health\r\n\r\n")
	for {
		pc, reused := p.take(host), true
		if pc == nil {
			c, err := p.dialer.DialContext(ctx, "tcp", host)
			if err != nil {
				return err
			}
			pc, reused = &probeConn{host: host, c: c}, false
		}
		status, keep, started, err := p.exchange(ctx, pc, req)
		if err == nil {
			h.Status = status
			if keep {
				p.put(pc)
			} else {
				pc.c.Close()
			}
			return nil
		}
		pc.c.Close()
		if !reused || started || ctx.Err() != nil {
			return err
		}
	}
}

// exchange sends req and reads the answer's status and body (up to
// probeBodyMax). keep says the connection can serve another probe; started
// that some of the answer came.
func (p *loopProber) exchange(ctx context.Context, pc *probeConn, req []byte) (status int, keep, started bool, err error) {
	dl, _ := ctx.Deadline() // zero: none, clearing the last probe's
	_ = pc.c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := pc.c.Write(req); err != nil {
		return 0, false, false, p.ctxErr(ctx, err)
	}
	r := probeBufs.Get().(*bufio.Reader)
	r.Reset(pc.c)
	defer func() {
		r.Reset(nil)
		probeBufs.Put(r)
	}()
	if _, err := r.Peek(1); err != nil {
		return 0, false, false, p.ctxErr(ctx, err)
	}
	resp, err := http.ReadResponse(r, probeGet)
	if err != nil {
		return 0, false, true, p.ctxErr(ctx, err)
	}
	// Drained so the connection can serve again, but never a big body.
	n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, probeBodyMax+1))
	resp.Body.Close()
	keep = err == nil && n <= probeBodyMax && !resp.Close && r.Buffered() == 0
	return resp.StatusCode, keep, true, nil
}

// ctxErr prefers the context's own error to the deadline it set.
func (p *loopProber) ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

// take returns the most recently used idle connection to host, if any.
func (p *loopProber) take(host string) *probeConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	els := p.idle[host]
	if len(els) == 0 {
		return nil
	}
	el := els[len(els)-1]
	if len(els) == 1 {
		delete(p.idle, host)
	} else {
		p.idle[host] = els[:len(els)-1]
	}
	return p.lru.Remove(el).(*probeConn)
}

func (p *loopProber) put(pc *probeConn) {
	pc.used = p.clk.Now()
	var drop []*probeConn
	p.mu.Lock()
	if len(p.idle[pc.host]) >= probeIdlePerHost {
		drop = append(drop, pc)
	} else {
		p.idle[pc.host] = append(p.idle[pc.host], p.lru.PushBack(pc))
		for p.lru.Len() > probeIdleMax {
			drop = append(drop, p.removeLocked(p.lru.Front()))
		}
		if !p.sweeping {
			p.sweeping = true
			p.clk.AfterFunc(probeIdleFor, p.sweep)
		}
	}
	p.mu.Unlock()
	for _, d := range drop {
		d.c.Close()
	}
}

// removeLocked takes el out of the idle set.
func (p *loopProber) removeLocked(el *list.Element) *probeConn {
	pc := p.lru.Remove(el).(*probeConn)
	els := p.idle[pc.host]
	for i, e := range els {
		if e == el {
			els = append(els[:i], els[i+1:]...)
			break
		}
	}
	if len(els) == 0 {
		delete(p.idle, pc.host)
	} else {
		p.idle[pc.host] = els
	}
	return pc
}

// sweep closes the connections unused for probeIdleFor (most belong to
// sandboxes claimed or gone since).
func (p *loopProber) sweep() {
	cut := p.clk.Now().Add(-probeIdleFor)
	var drop []*probeConn
	p.mu.Lock()
	for el := p.lru.Front(); el != nil && !el.Value.(*probeConn).used.After(cut); el = p.lru.Front() {
		drop = append(drop, p.removeLocked(el))
	}
	if front := p.lru.Front(); front != nil {
		p.clk.AfterFunc(front.Value.(*probeConn).used.Sub(cut), p.sweep)
	} else {
		p.sweeping = false
	}
	p.mu.Unlock()
	for _, d := range drop {
		d.c.Close()
	}
}

// closeIdle closes every kept connection.
func (p *loopProber) closeIdle() {
	p.mu.Lock()
	var drop []*probeConn
	for el := p.lru.Front(); el != nil; el = p.lru.Front() {
		drop = append(drop, p.removeLocked(el))
	}
	p.mu.Unlock()
	for _, d := range drop {
		d.c.Close()
	}
}
