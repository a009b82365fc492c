// Package journal shares a pool's events between the processes of one
// machine: every process (controller, viewer dashboards, CLI claims and
// terminations) appends its events to one JSON-lines file per pool in the
// state directory, and long-lived processes follow it so that a viewer sees
// the pool's life whoever caused it.
//
// Appending never blocks the caller: events go through a buffered channel
// to a writer goroutine, and are dropped (counted) when it is full. The file
// is capped: past MaxBytes it is renamed to <name>.1 (one generation kept)
// and a new one begun. A viewer on another machine reads another state
// directory and sees none of this.
package journal

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/plainjson"
	"github.com/sandboxpool/sandboxpool/pool"
)

// Defaults of Options.
const (
	DefaultMaxBytes   = 4 << 20
	DefaultBuffer     = 1024
	DefaultPollEvery  = 200 * time.Millisecond
	closeFlushTimeout = 2 * time.Second
	maxLine           = 64 << 10 // a longer line is skipped by followers
	// batchWait: an event that comes within this of the last append waits
	// that long, and goes out with the others that came meanwhile in one
	// append (a write and two stats, and one wake-up of the writer, instead
	// of that for each: a creation has two events). An event after a quiet
	// spell is written at once. Followers poll every 200 ms.
	batchWait = 50 * time.Millisecond
)

// Origin says which process wrote a record. ID tells apart two journals of
// one process (tests run a controller and a viewer side by side).
type Origin struct {
	Host string `json:"host"`
	Pid  int    `json:"pid"`
	ID   string `json:"id"`
}

// Label names the origin for a person: "pid 4242", with the host when it is
// not this one.
func (o Origin) Label() string {
	l := "pid " + strconv.Itoa(o.Pid)
	if h := hostname(); o.Host != "" && o.Host != h {
		l += " on " + o.Host
	}
	return l
}

// Options shapes a Journal.
type Options struct {
	// MaxBytes caps the file before it is rotated (default 4 MiB).
	MaxBytes int64
	// Buffer is how many events may wait for the writer (default 1024).
	Buffer int
	// Keep, when set, decides in the writer goroutine which events are
	// written (the caller's hot path never runs it).
	Keep func(pool.Event) bool
	// PollEvery is how often Follow looks for new lines (default 200ms).
	PollEvery time.Duration
}

// Journal is one process's handle on a pool's journal.
type Journal struct {
	path   string
	opts   Options
	origin Origin

	ch      chan pool.Event
	wfi     os.FileInfo // the writer's open file, as opened (writer goroutine only)
	done    chan struct{}
	stop    chan struct{}
	once    sync.Once
	dropped atomic.Int64
	werr    atomic.Pointer[string]
}

// Path is where the journal of pool poolName lives in dir.
func Path(dir, poolName string) string {
	return filepath.Join(dir, poolName+".events.jsonl")
}

// Open starts the writer for pool poolName in dir. The file is created on
// the first write, mode 0600.
func Open(dir, poolName string, o Options) (*Journal, error) {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Buffer <= 0 {
		o.Buffer = DefaultBuffer
	}
	if o.PollEvery <= 0 {
		o.PollEvery = DefaultPollEvery
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	j := &Journal{
		path: Path(dir, poolName), opts: o,
		origin: Origin{Host: hostname(), Pid: os.Getpid(), ID: hex.EncodeToString(nonce[:])},
		ch:     make(chan pool.Event, o.Buffer), done: make(chan struct{}), stop: make(chan struct{}),
	}
	go j.writer()
	return j, nil
}

// Origin is this journal's origin, as its records carry it.
func (j *Journal) Origin() Origin { return j.origin }

// Append queues e for writing; it never blocks. When the writer is behind
// by Buffer events, e is dropped and counted.
func (j *Journal) Append(e pool.Event) {
	select {
	case <-j.stop:
		return
	default:
	}
	select {
	case j.ch <- e:
	default:
		j.dropped.Add(1)
	}
}

// Dropped is how many events were not written because the writer was behind.
func (j *Journal) Dropped() int64 { return j.dropped.Load() }

// Err is the last write error, if any ("" when all is well).
func (j *Journal) Err() string {
	if p := j.werr.Load(); p != nil {
		return *p
	}
	return ""
}

// Close writes what is queued (for up to 2 s) and stops the writer.
func (j *Journal) Close() error {
	j.once.Do(func() { close(j.stop) })
	select {
	case <-j.done:
	case <-time.After(closeFlushTimeout):
	}
	return nil
}

// record is one line of the journal.
type record struct {
	Origin Origin    `json:"origin"`
	Event  wireEvent `json:"event"`
}

type wireHealth struct {
	OK        bool      `json:"ok"`
	Status    int       `json:"status,omitempty"`
	LatencyNS int64     `json:"latency_ns,omitempty"`
	CheckedAt time.Time `json:"checked_at,omitzero"`
	Error     string    `json:"error,omitempty"`
}

type wireEvent struct {
	Time       time.Time   `json:"time"`
	Kind       string      `json:"kind"`
	SandboxID  string      `json:"sandbox,omitempty"`
	By         string      `json:"by,omitempty"`
	Reason     string      `json:"reason,omitempty"`
	DurationNS int64       `json:"duration_ns,omitempty"`
	Warm       bool        `json:"warm,omitempty"`
	Health     *wireHealth `json:"health,omitempty"`
	Until      time.Time   `json:"until,omitzero"`
	Err        string      `json:"err,omitempty"`
	Message    string      `json:"message,omitempty"`
}

// appendJSON appends r's line as the journal's encoder writes it, without
// reflection (an event a claim, a creation...), when its strings and times
// are ones JSON writes as they are (plainjson); ok is false otherwise.
func (r *record) appendJSON(b []byte) (_ []byte, ok bool) {
	e, o := &r.Event, &r.Origin
	for _, s := range [...]string{o.Host, o.ID, e.Kind, e.SandboxID, e.By, e.Reason, e.Err, e.Message} {
		if !plainjson.Plain(s, true) {
			return b, false
		}
	}
	if !plainjson.Time(e.Time) || !plainjson.Time(e.Until) {
		return b, false
	}
	if h := e.Health; h != nil && (!plainjson.Plain(h.Error, true) || !plainjson.Time(h.CheckedAt)) {
		return b, false
	}
	b = append(b, `{"origin":{"host":`...)
	b = plainjson.AppendString(b, o.Host)
	b = append(b, `,"pid":`...)
	b = strconv.AppendInt(b, int64(o.Pid), 10)
	b = append(b, `,"id":`...)
	b = plainjson.AppendString(b, o.ID)
	b = append(b, `},"event":{"time":`...)
	b = plainjson.AppendTime(b, e.Time)
	b = append(b, `,"kind":`...)
	b = plainjson.AppendString(b, e.Kind)
	b = plainjson.AppendStringField(b, "sandbox", e.SandboxID)
	b = plainjson.AppendStringField(b, "by", e.By)
	b = plainjson.AppendStringField(b, "reason", e.Reason)
	b = plainjson.AppendIntField(b, "duration_ns", e.DurationNS)
	if e.Warm {
		b = append(b, `,"warm":true`...)
	}
	if h := e.Health; h != nil {
		b = append(b, `,"health":{"ok":`...)
		b = strconv.AppendBool(b, h.OK)
		b = plainjson.AppendIntField(b, "status", int64(h.Status))
		b = plainjson.AppendIntField(b, "latency_ns", h.LatencyNS)
		if !h.CheckedAt.IsZero() {
			b = append(b, `,"checked_at":`...)
			b = plainjson.AppendTime(b, h.CheckedAt)
		}
		b = plainjson.AppendStringField(b, "error", h.Error)
		b = append(b, '}')
	}
	if !e.Until.IsZero() {
		b = append(b, `,"until":`...)
		b = plainjson.AppendTime(b, e.Until)
	}
	b = plainjson.AppendStringField(b, "err", e.Err)
	b = plainjson.AppendStringField(b, "message", e.Message)
	return append(b, "}}\n"...), true
}

func toWire(e pool.Event) wireEvent {
	w := wireEvent{Time: e.Time, Kind: string(e.Kind), SandboxID: e.SandboxID, By: e.By, Reason: e.Reason,
		DurationNS: int64(e.Duration), Warm: e.Warm, Until: e.Until, Err: e.Err, Message: e.Message}
	if h := e.Health; h.Checked() {
		w.Health = &wireHealth{OK: h.OK, Status: h.Status, LatencyNS: int64(h.Latency), CheckedAt: h.CheckedAt, Error: h.Error}
	}
	return w
}

func (w wireEvent) event() pool.Event {
	e := pool.Event{Time: w.Time, Kind: pool.EventKind(w.Kind), SandboxID: w.SandboxID, By: w.By, Reason: w.Reason,
		Duration: time.Duration(w.DurationNS), Warm: w.Warm, Until: w.Until, Err: w.Err, Message: w.Message}
	if h := w.Health; h != nil {
		e.Health = pool.Health{OK: h.OK, Status: h.Status, Latency: time.Duration(h.LatencyNS), CheckedAt: h.CheckedAt, Error: h.Error}
	}
	return e
}

// writer drains the channel in batches, one append per batch.
func (j *Journal) writer() {
	defer close(j.done)
	var f *os.File
	defer func() {
		if f != nil {
			_ = f.Close()
		}
	}()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	flush := func() {
		if buf.Len() == 0 {
			return
		}
		var err error
		f, err = j.write(f, buf.Bytes())
		if err != nil {
			s := err.Error()
			j.werr.Store(&s)
		}
		buf.Reset()
	}
	add := func(e pool.Event) {
		if j.opts.Keep != nil && !j.opts.Keep(e) {
			return
		}
		r := record{Origin: j.origin, Event: toWire(e)}
		if b, ok := r.appendJSON(buf.AvailableBuffer()); ok {
			buf.Write(b)
			return
		}
		_ = enc.Encode(r)
	}
	// A batch stays small next to the cap, so that a rotated file is not
	// much over it.
	limit := int(min(256<<10, max(j.opts.MaxBytes/4, 1)))
	wait := time.NewTimer(time.Hour)
	wait.Stop()
	var flushed time.Time
	for {
		select {
		case e := <-j.ch:
			if d := batchWait - time.Since(flushed); d > 0 {
				// Events keep coming (a fill, a burst of claims): gather
				// them, asleep, rather than wake and write for each.
				wait.Reset(d)
				select {
				case <-wait.C:
				case <-j.stop:
					wait.Stop()
				}
			}
			add(e)
			for more := true; more && buf.Len() < limit; {
				select {
				case e := <-j.ch:
					add(e)
				default:
					more = false
				}
			}
			flush()
			flushed = time.Now()
		case <-j.stop:
			for {
				select {
				case e := <-j.ch:
					add(e)
				default:
					flush()
					return
				}
			}
		}
	}
}

// write appends b (whole lines) to the journal, reopening it when another
// process rotated it, and rotating it past MaxBytes. O_APPEND keeps the
// lines of concurrent writers whole.
func (j *Journal) write(f *os.File, b []byte) (*os.File, error) {
	if f != nil {
		// f's own identity never changes: only the path is looked at again.
		if cur, err := os.Stat(j.path); err != nil || !os.SameFile(j.wfi, cur) {
			_ = f.Close()
			f = nil
		}
	}
	if f == nil {
		var err error
		if f, err = os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
			return nil, err
		}
		if j.wfi, err = f.Stat(); err != nil {
			_ = f.Close()
			return nil, err
		}
	}
	if _, err := f.Write(b); err != nil {
		return f, err
	}
	if fi, err := f.Stat(); err == nil && fi.Size() > j.opts.MaxBytes {
		j.rotate(f)
		_ = f.Close()
		return nil, nil // reopened at the next write
	}
	return f, nil
}

// rotate renames the file to .1, unless another writer did it first (the
// path then names another file). A lock file serialises writers rotating.
func (j *Journal) rotate(f *os.File) {
	lf, err := os.OpenFile(j.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return
	}
	defer func() { _ = syscall.Flock(int(lf.Fd()), syscall.LOCK_UN) }()
	if samePath(f, j.path) {
		_ = os.Rename(j.path, j.path+".1")
	}
}

// samePath reports whether f is still the file at path.
func samePath(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	if err != nil {
		return false
	}
	return os.SameFile(a, b)
}

// Follow calls fn, in order, for each event that other processes append
// from now on (this journal's own lines are skipped), until ctx ends. It
// follows the file across rotations and waits for it to exist.
func (j *Journal) Follow(ctx context.Context, fn func(Origin, pool.Event)) error {
	t := &tail{path: j.path}
	// This process's own lines start so (the writer encodes the record with
	// its origin first): skipped without decoding, as each creation writes
	// several. A line that does not match is decoded and checked by ID.
	t.skip = linePrefix(j.origin)
	t.start()
	defer t.close()
	tick := time.NewTicker(j.opts.PollEvery)
	defer tick.Stop()
	for {
		for _, r := range t.poll() {
			if r.Origin.ID == j.origin.ID {
				continue
			}
			fn(r.Origin, r.Event.event())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// linePrefix is how every line the writer of origin o appends starts.
func linePrefix(o Origin) []byte {
	b, err := json.Marshal(o)
	if err != nil {
		return nil
	}
	return append(append([]byte(`{"origin":`), b...), ',')
}

// tail reads the lines appended to a file, across renames.
type tail struct {
	path    string
	f       *os.File
	off     int64
	partial []byte
	skip    []byte        // lines with this prefix are not decoded
	r       *bufio.Reader // kept across polls: its 64 KiB buffer is not made anew each time
}

// start opens the file at its end: only what is appended from now on counts.
func (t *tail) start() {
	f, err := os.Open(t.path)
	if err != nil {
		return // not yet written: poll opens it from its start
	}
	t.f = f
	t.off, _ = f.Seek(0, io.SeekEnd)
}

func (t *tail) close() {
	if t.f != nil {
		_ = t.f.Close()
	}
}

func (t *tail) poll() []record {
	var out []record
	if t.f == nil {
		f, err := os.Open(t.path)
		if err != nil {
			return nil
		}
		t.f, t.off, t.partial = f, 0, nil
	}
	out = t.read(out)
	// Rotated (the path names another file) or truncated: finish the old
	// file, then start the new one from its beginning.
	fi, err := os.Stat(t.path)
	cur, cerr := t.f.Stat()
	switch {
	case err != nil && errors.Is(err, os.ErrNotExist):
		// rotated and not yet recreated: keep reading the old until it is
	case err == nil && cerr == nil && !os.SameFile(fi, cur):
		out = t.read(out)
		_ = t.f.Close()
		t.f, t.off, t.partial = nil, 0, nil
		if f, err := os.Open(t.path); err == nil {
			t.f = f
			out = t.read(out)
		}
	case cerr == nil && cur.Size() < t.off:
		t.off, t.partial = 0, nil
		out = t.read(out)
	}
	return out
}

// read parses the whole lines from off to the end of the file.
func (t *tail) read(out []record) []record {
	if _, err := t.f.Seek(t.off, io.SeekStart); err != nil {
		return out
	}
	if t.r == nil {
		t.r = bufio.NewReaderSize(t.f, 64<<10)
	} else {
		t.r.Reset(t.f)
	}
	r := t.r
	for {
		line, err := r.ReadSlice('\n')
		t.off += int64(len(line))
		if err == bufio.ErrBufferFull {
			t.partial = append(t.partial, line...)
			continue
		}
		if err != nil { // EOF: keep the unfinished line for the next poll
			t.partial = append(t.partial, line...)
			return out
		}
		if len(t.partial) > 0 {
			line = append(t.partial, line...)
			t.partial = nil
		}
		if len(line) > maxLine || len(t.skip) > 0 && bytes.HasPrefix(line, t.skip) {
			continue
		}
		var rec record
		if json.Unmarshal(line, &rec) == nil && rec.Event.Kind != "" {
			out = append(out, rec)
		}
	}
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}
