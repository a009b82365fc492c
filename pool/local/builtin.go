package local

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// builtinServer is the built-in workload of one sandbox: a plain HTTP/1.1
// server on the sandbox's own loopback port, answering as http.FileServer
// would for a directory holding one README.txt (builtinHandler).
//
// It is not net/http's Server: that one costs, per connection, a goroutine
// whose stack grows past its first size and 8 KiB of buffers kept while the
// connection idles, and per request a context, a second goroutine that
// watches the connection while the handler runs and a wake-up to stop it.
// With a connection per sandbox kept for its health checks, that was most
// of the agent's CPU and memory per created sandbox (issue 9). Here a
// connection is one goroutine that reads a request with net/http's parser
// and writes the whole answer in one write.
type builtinServer struct {
	h   builtinHandler
	log io.Writer // the sandbox's log: accept errors

	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn // open connections, closed with the server
	closed bool
}

// Limits as net/http's Server with ReadHeaderTimeout 10s, IdleTimeout 2m
// and the default MaxHeaderBytes.
const (
	builtinHeaderTimeout = 10 * time.Second
	builtinIdleTimeout   = 2 * time.Minute
	builtinMaxHeader     = http.DefaultMaxHeaderBytes + 4096
	// A request body up to this size is read and dropped, keeping the
	// connection; a bigger one (or one the client waits a 100 Continue
	// for) gets its answer and the connection closed (net/http: 256 KiB).
	builtinMaxDiscard = 256 << 10
	// Requests are small: a longer header line is read in pieces.
	builtinReadBuf = 512
)

// serve accepts connections on ln until the server is closed.
func (s *builtinServer) serve(ln net.Listener) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return
	}
	s.ln = ln
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return
			}
			// As net/http: out of descriptors and the like pass.
			if isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				fmt.Fprintf(s.log, "sandboxpool: accept: %v; retrying in %v\n", err, delay)
				time.Sleep(delay)
				continue
			}
			fmt.Fprintf(s.log, "sandboxpool: accept: %v\n", err)
			return
		}
		delay = 0
		if !s.track(c) {
			c.Close()
			return
		}
		go s.serveConn(c)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *builtinServer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track adds c to the open connections, unless the server is closed.
func (s *builtinServer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns = append(s.conns, c)
	return true
}

func (s *builtinServer) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, o := range s.conns {
		if o == c {
			last := len(s.conns) - 1
			s.conns[i], s.conns[last] = s.conns[last], nil
			s.conns = s.conns[:last]
			break
		}
	}
}

// close closes the listener and every connection at once.
func (s *builtinServer) close() {
	s.mu.Lock()
	s.closed = true
	ln, conns := s.ln, s.conns
	s.ln, s.conns = nil, nil
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	for _, c := range conns {
		c.Close()
	}
}

// serveConn answers the requests of one connection, one at a time, until
// the client closes it, asks to, idles past builtinIdleTimeout or sends
// something that is not HTTP/1.x.
func (s *builtinServer) serveConn(c net.Conn) {
	defer s.untrack(c)
	defer c.Close()
	lr := &io.LimitedReader{R: c, N: builtinMaxHeader}
	br := bufio.NewReaderSize(lr, builtinReadBuf)
	w := &builtinWriter{}
	for {
		_ = c.SetReadDeadline(time.Now().Add(builtinIdleTimeout))
		if _, err := br.Peek(1); err != nil {
			return // closed, idle too long
		}
		_ = c.SetReadDeadline(time.Now().Add(builtinHeaderTimeout))
		lr.N = builtinMaxHeader - int64(br.Buffered())
		req, err := http.ReadRequest(br)
		if err != nil {
			switch {
			case lr.N <= 0:
				writeStatusClose(c, http.StatusRequestHeaderFieldsTooLarge, "")
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), isTimeout(err):
			default:
				writeStatusClose(c, http.StatusBadRequest, "")
			}
			return
		}
		if msg := badRequest(req); msg != "" {
			if msg == errVersion {
				writeStatusClose(c, http.StatusHTTPVersionNotSupported, msg)
			} else {
				writeStatusClose(c, http.StatusBadRequest, msg)
			}
			return
		}
		// An HTTP/1.0 client gets its answer and the connection closed.
		keep := req.ProtoAtLeast(1, 1) && !req.Close
		if req.Body != http.NoBody {
			lr.N = builtinMaxDiscard + 1 // the body is read past the header's limit
			if req.Header.Get("Expect") != "" {
				keep = false // never read: no 100 Continue is sent
			} else if n, err := io.Copy(io.Discard, req.Body); err != nil || n > builtinMaxDiscard {
				keep = false
			}
		}
		w.reset(req)
		s.h.ServeHTTP(w, req)
		if _, err := c.Write(w.response(keep)); err != nil || !keep {
			if !keep {
				lingerClose(c)
			}
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

const errVersion = "unsupported protocol version"

// badRequest says what net/http's Server refuses in a request it parsed.
func badRequest(req *http.Request) string {
	// HTTP/1.x, and the HTTP/2 preface, which net/http leaves to the handler.
	if req.ProtoMajor != 1 && !(req.ProtoMajor == 2 && req.ProtoMinor == 0 && req.Method == "PRI" && req.RequestURI == "*") {
		return errVersion
	}
	// http.ReadRequest moved the Host header to req.Host.
	if req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != http.MethodConnect && req.ProtoMajor == 1 {
		return "missing required Host header"
	}
	if req.Host != "" && !httpguts.ValidHostHeader(req.Host) {
		return "malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return "invalid header value"
			}
		}
	}
	return ""
}

// writeStatusClose answers a request that could not be served, as
// net/http does, before the connection is closed.
func writeStatusClose(c net.Conn, code int, msg string) {
	text := strconv.Itoa(code) + " " + http.StatusText(code)
	body := text
	if msg != "" {
		body += ": " + msg
	}
	_, _ = io.WriteString(c, "HTTP/1.1 "+text+"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"+body)
	lingerClose(c)
}

// lingerClose half-closes c and drops what the client still sends for a
// moment before the close: closing with unread input makes the kernel send
// a reset, which can destroy the answer before the client reads it.
func lingerClose(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	if tc.CloseWrite() != nil {
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.CopyN(io.Discard, c, builtinMaxDiscard)
}

// builtinWriter is the http.ResponseWriter of one request: it keeps the
// whole answer (the built-in workload's answers are a few hundred bytes)
// and makes it one buffer, with its length, for one write.
type builtinWriter struct {
	req    *http.Request
	header http.Header
	code   int
	body   []byte
	out    []byte
}

func (w *builtinWriter) reset(req *http.Request) {
	w.req, w.code, w.body = req, 0, w.body[:0]
	if w.header == nil {
		w.header = make(http.Header, 4)
	} else {
		clear(w.header)
	}
}

func (w *builtinWriter) Header() http.Header { return w.header }

func (w *builtinWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
}

func (w *builtinWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if !bodyAllowed(w.code) {
		return 0, http.ErrBodyNotAllowed
	}
	w.body = append(w.body, p...)
	return len(p), nil
}

func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// response is the status line, the header and the body (none for HEAD),
// with Content-Length, Date and, unless keep, Connection: close.
func (w *builtinWriter) response(keep bool) []byte {
	w.WriteHeader(http.StatusOK)
	h := w.header
	if bodyAllowed(w.code) {
		if w.req.Method != http.MethodHead || len(w.body) > 0 || len(h["Content-Length"]) == 0 {
			h["Content-Length"] = []string{strconv.Itoa(len(w.body))}
		}
		if len(h["Content-Type"]) == 0 && len(w.body) > 0 {
			h["Content-Type"] = []string{http.DetectContentType(w.body)}
		}
	} else {
		delete(h, "Content-Length")
	}
	delete(h, "Connection")
	delete(h, "Transfer-Encoding")
	out := append(w.out[:0], "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(w.code), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(w.code)...)
	out = append(out, "\r\nDate: "...)
	out = time.Now().UTC().AppendFormat(out, http.TimeFormat)
	if !keep {
		out = append(out, "\r\nConnection: close"...)
	}
	for k, vs := range h {
		for _, v := range vs {
			out = append(out, "\r\n"...)
			out = append(out, k...)
			out = append(out, ": "...)
			if strings.ContainsAny(v, "\r\n") {
				v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
			}
			out = append(out, v...)
		}
	}
	out = append(out, "\r\n\r\n"...)
	if w.req.Method != http.MethodHead {
		out = append(out, w.body...)
	}
	w.out = out
	return out
}

// builtinHandler is the built-in workload: a directory listing holding one
// README.txt, as http.FileServer would serve it from disk.
type builtinHandler struct {
	readme string
	at     time.Time
}

var builtinListing = []byte("<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n<a href=\"README.txt\">README.txt</a>\n</pre>\n")

func (h builtinHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/":
		w.Header()["Content-Type"] = []string{"text/html; charset=utf-8"}
		w.Header()["Content-Length"] = []string{strconv.Itoa(len(builtinListing))}
		if r.Method != http.MethodHead {
			_, _ = w.Write(builtinListing)
		}
	case "/README.txt":
		http.ServeContent(w, r, "README.txt", h.at, strings.NewReader(h.readme))
	default:
		http.NotFound(w, r)
	}
}
