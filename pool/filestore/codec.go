package filestore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/plainjson"
	"github.com/sandboxpool/sandboxpool/pool"
)

// The store file is a snapshot, one JSON object written whole by a rename,
// followed by a log: one JSON record per line, appended by each change. The
// snapshot's seq counts the records of the file's history it folds in.
//
//	{"version":3,"target":3,"ttl":"2m0s","use_duration":"30s","workload":"{\"cmd\":\"...\"}","seq":42,"entries":[
//	{"id":"a",...,"claimed_by":"cli","claimed_at":"..."},
//	{"id":"b",...}
//	]}
//	{"op":"claim","id":"b","by":"api 127.0.0.1:5555","at":"..."}
//	{"op":"put","id":"c","url":"...","created_at":"...","expires_at":"..."}
//
// A log line without its newline is the torn tail of a writer that died
// mid-append: it was never acknowledged, so it is ignored (and cut away by
// the next writer). Anything else that does not decode is corruption.

// fileVersion is the layout this build writes. Earlier ones are read too,
// and rewritten whole as this one by the first change. A later one is
// refused for its version, whatever fields it has (newerError). Builds
// before version 3 decode strictly before they look at the version: they
// refuse a version 3 file as corrupt for its first field they do not know
// ("unknown field "seq""), or for its version, and leave it untouched:
//   - 1: the snapshot alone;
//   - 2: the snapshot and its log;
//   - 3: the pool's workload (a snapshot field and a log record) and the
//     snapshot's seq, which version 2 files of some builds hold too.
const fileVersion = 3

// newerError is a store file of a later version than this build reads:
// left untouched like a corrupt one, and said for what it is.
type newerError struct {
	path    string
	version int
}

func (e newerError) Error() string {
	return fmt.Sprintf("%s: store version %d, written by a newer sandboxpool: this build reads versions 1 to %d (left untouched: use the newer build)", e.path, e.version, fileVersion)
}

func (e newerError) Unwrap() error { return ErrCorrupt }

// ErrCorrupt is wrapped by every error about a store file whose content
// cannot be trusted. Such a file is never overwritten.
var ErrCorrupt = errors.New("corrupt store file")

// fileData is the snapshot's layout.
type fileData struct {
	Version  *int         `json:"version"`
	Target   *int         `json:"target"`
	TTL      string       `json:"ttl"`
	Use      string       `json:"use_duration"`
	Workload string       `json:"workload"`
	Seq      uint64       `json:"seq"`
	Entries  []pool.Entry `json:"entries"`
}

// record is one log line. Op says which fields count:
// put (id, url, created_at, expires_at), claim (id, by, at), del (id),
// target (n), timing (ttl, use_duration), workload (workload).
type record struct {
	Op        string    `json:"op"`
	ID        string    `json:"id,omitempty"`
	URL       string    `json:"url,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	By        string    `json:"by,omitempty"`
	At        time.Time `json:"at,omitzero"`
	N         *int      `json:"n,omitempty"`
	TTL       string    `json:"ttl,omitempty"`
	Use       string    `json:"use_duration,omitempty"`
	Workload  string    `json:"workload,omitempty"`
}

// layout says where things are in a decoded file.
type layout struct {
	version int
	snapEnd int64 // end of the snapshot, its newline included
	end     int64 // end of the last complete line: where the next record goes
	size    int64 // bytes read, a torn tail included
	// appendable is false when the file must be rewritten before a record
	// can follow (an old version, or a snapshot without its newline).
	appendable bool
}

// decode parses and validates a whole store file. The error says what is
// wrong in one line, without the path (the caller adds it).
func decode(data []byte) (*state, layout, error) {
	st, lay, err := decodeSnapshot(data)
	if err != nil {
		return nil, layout{}, err
	}
	n, err := st.replay(data[lay.snapEnd:], lay.snapEnd)
	if err != nil {
		return nil, layout{}, err
	}
	lay.end = lay.snapEnd + n
	lay.size = int64(len(data))
	return st, lay, nil
}

func decodeSnapshot(data []byte) (*state, layout, error) {
	var fd fileData
	dec := json.NewDecoder(bytes.NewReader(data))
	// Unknown fields would be silently lost on the next rewrite: refuse them.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fd); err != nil {
		if v := peekVersion(data); v > fileVersion {
			// Its new fields are why: the version says so better.
			return nil, layout{}, newerError{version: v}
		}
		return nil, layout{}, jsonProblem(err, dec)
	}
	lay := layout{snapEnd: dec.InputOffset(), appendable: true}
	switch {
	case lay.snapEnd == int64(len(data)):
		lay.appendable = false // a hand-edited file that lost its last newline
	case data[lay.snapEnd] == '\n':
		lay.snapEnd++
	default:
		// The snapshot is written whole, newline included: nothing may share its line.
		return nil, layout{}, fmt.Errorf("trailing data after the JSON object at byte %d", lay.snapEnd)
	}
	switch {
	case fd.Version == nil:
		return nil, layout{}, errors.New(`no "version" field (not a sandboxpool store file?)`)
	case *fd.Version > fileVersion:
		return nil, layout{}, newerError{version: *fd.Version}
	case *fd.Version < 1:
		return nil, layout{}, fmt.Errorf("unknown version %d (this build reads versions 1 to %d)", *fd.Version, fileVersion)
	case *fd.Version < fileVersion:
		lay.appendable = false // rewritten as this version by the first change
	}
	lay.version = *fd.Version
	st := newState(settings{})
	if fd.Target != nil {
		if *fd.Target < 0 {
			return nil, layout{}, fmt.Errorf("negative target %d", *fd.Target)
		}
		st.target, st.hasTarget = *fd.Target, true
	}
	if fd.TTL != "" || fd.Use != "" {
		ttl, use, err := parseTiming(fd.TTL, fd.Use)
		if err != nil {
			return nil, layout{}, err
		}
		st.ttl, st.use = ttl, use
	}
	st.workload, st.seq = fd.Workload, fd.Seq
	for i, e := range fd.Entries {
		// A repeated id could be claimed twice, so it counts as corruption too.
		if e.ID == "" {
			return nil, layout{}, fmt.Errorf("entry %d has no id", i)
		}
		if st.has(e.ID) {
			return nil, layout{}, fmt.Errorf("entry %d repeats id %q", i, e.ID)
		}
		st.push(e)
	}
	return st, lay, nil
}

// peekVersion is the version of a snapshot that does not decode strictly,
// read leniently (0 when even that fails).
func peekVersion(data []byte) int {
	var v struct {
		Version int `json:"version"`
	}
	if json.NewDecoder(bytes.NewReader(data)).Decode(&v) != nil {
		return 0
	}
	return v.Version
}

func parseTiming(ttlS, useS string) (ttl, use time.Duration, err error) {
	ttl, err1 := time.ParseDuration(ttlS)
	use, err2 := time.ParseDuration(useS)
	if err1 != nil || err2 != nil || use <= 0 || ttl <= use {
		return 0, 0, fmt.Errorf("bad timing ttl %q use_duration %q (want durations with 0 < use_duration < ttl)", ttlS, useS)
	}
	return ttl, use, nil
}

// replay applies the complete log lines of data, which starts at byte base
// of the file, and returns how many bytes they take; a last line without
// its newline is left out.
func (st *state) replay(data []byte, base int64) (int64, error) {
	var done int64
	for {
		nl := bytes.IndexByte(data[done:], '\n')
		if nl < 0 {
			return done, nil
		}
		line := data[done : done+int64(nl)]
		if len(bytes.TrimSpace(line)) > 0 {
			if err := st.applyLine(line); err != nil {
				return 0, fmt.Errorf("log record at byte %d: %w", base+done, err)
			}
		}
		done += int64(nl) + 1
	}
}

func (st *state) applyLine(line []byte) error {
	var r record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return jsonProblem(err, dec)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the record")
	}
	if err := st.apply(&r); err != nil {
		return err
	}
	st.seq++
	return nil
}

// apply replays one record. Writers only log what applied to the state they
// read, so a record that does not apply means the file cannot be trusted.
func (st *state) apply(r *record) error {
	switch r.Op {
	case "put":
		switch {
		case r.ID == "":
			return errors.New("put without an id")
		case st.has(r.ID):
			return fmt.Errorf("put of %q, already recorded", r.ID)
		}
		st.add(pool.Entry{Ref: pool.Ref{ID: r.ID, URL: r.URL, CreatedAt: r.CreatedAt, ExpiresAt: r.ExpiresAt}})
	case "claim":
		i := st.pooledIndex(r.ID)
		switch {
		case i < 0:
			return fmt.Errorf("claim of %q, which is not in the pool", r.ID)
		case r.By == "":
			return fmt.Errorf("claim of %q by nobody", r.ID)
		}
		st.claim(i, r.By, r.At)
	case "del":
		if _, ok := st.remove(r.ID, false); !ok {
			return fmt.Errorf("delete of %q, which is not recorded", r.ID)
		}
	case "target":
		if r.N == nil || *r.N < 0 {
			return errors.New("target without a count of 0 or more")
		}
		st.target, st.hasTarget = *r.N, true
	case "timing":
		ttl, use, err := parseTiming(r.TTL, r.Use)
		if err != nil {
			return err
		}
		st.ttl, st.use = ttl, use
	case "workload":
		if r.Workload == "" {
			return errors.New("workload without one")
		}
		st.workload = r.Workload
	default:
		return fmt.Errorf("unknown op %q", r.Op)
	}
	return nil
}

// jsonProblem turns a decoding error into one readable line.
func jsonProblem(err error, dec *json.Decoder) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return errors.New("empty file")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("truncated JSON")
	case errors.As(err, &syn):
		return fmt.Errorf("invalid JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Errorf("the file holds a JSON %s, not an object", typ.Value)
		}
		// Field names the embedded pool.Ref, which is no JSON name.
		field := strings.ReplaceAll(typ.Field, ".Ref.", ".")
		return fmt.Errorf("%s at byte %d: JSON %s where %s belongs", field, typ.Offset, typ.Value, typ.Type)
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	return fmt.Errorf("%s near byte %d", strings.ReplaceAll(msg, "\n", " "), dec.InputOffset())
}

// encodeSnapshot writes st into buf, without the claimed entries drop
// rejects: one entry per line, so the file stays readable by people.
func encodeSnapshot(buf *bytes.Buffer, st *state, drop func(pool.Entry) bool) error {
	buf.Reset()
	buf.WriteString(`{"version":` + strconv.Itoa(fileVersion))
	if st.hasTarget {
		buf.WriteString(`,"target":`)
		buf.WriteString(strconv.Itoa(st.target))
	}
	if st.ttl > 0 {
		buf.WriteString(`,"ttl":"` + st.ttl.String() + `","use_duration":"` + st.use.String() + `"`)
	}
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false) // URLs keep their '&'
	if st.workload != "" {
		buf.WriteString(`,"workload":`)
		if err := enc.Encode(st.workload); err != nil {
			return err
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
	}
	if st.seq > 0 {
		buf.WriteString(`,"seq":` + strconv.FormatUint(st.seq, 10))
	}
	buf.WriteString(`,"entries":[`)
	first := true
	put := func(e *pool.Entry) error {
		if !first {
			buf.WriteByte(',')
		}
		first = false
		buf.WriteByte('\n')
		if err := enc.Encode(e); err != nil {
			return err
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
		return nil
	}
	for i := range st.claimed {
		if e := &st.claimed[i]; e.ID != "" && (drop == nil || !drop(*e)) {
			if err := put(e); err != nil {
				return err
			}
		}
	}
	for i := range st.pooled {
		if err := put(&st.pooled[i]); err != nil {
			return err
		}
	}
	if !first {
		buf.WriteByte('\n')
	}
	buf.WriteString("]}\n")
	return nil
}

// logWriter encodes records into a buffer, one per line.
type logWriter struct {
	buf *bytes.Buffer
	enc *json.Encoder
}

func newLogWriter(buf *bytes.Buffer) *logWriter {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	return &logWriter{buf: buf, enc: enc}
}

// add encodes r; callers validate what they log (see encodable), so it
// cannot fail.
func (w *logWriter) add(r record) {
	if b, ok := appendRecord(w.buf.AvailableBuffer(), &r); ok {
		w.buf.Write(b)
		return
	}
	if err := w.enc.Encode(&r); err != nil {
		panic("filestore: unencodable record: " + err.Error())
	}
}

// appendRecord appends r's line as the encoder writes it, without
// reflection (a claim's record is written inside the store's lock), when
// every string in it is one JSON writes unchanged (plainjson); ok is false
// otherwise, and the encoder writes it.
func appendRecord(b []byte, r *record) (_ []byte, ok bool) {
	if r.Workload != "" {
		return b, false // rare, and JSON in JSON: the encoder's
	}
	for _, s := range [...]string{r.Op, r.ID, r.URL, r.By, r.TTL, r.Use} {
		if !plainjson.Plain(s, false) {
			return b, false
		}
	}
	for _, t := range [...]time.Time{r.CreatedAt, r.ExpiresAt, r.At} {
		if !plainjson.Time(t) {
			return b, false
		}
	}
	b = append(b, `{"op":`...)
	b = plainjson.AppendString(b, r.Op)
	b = plainjson.AppendStringField(b, "id", r.ID)
	b = plainjson.AppendStringField(b, "url", r.URL)
	b = plainjson.AppendTimeField(b, "created_at", r.CreatedAt)
	b = plainjson.AppendTimeField(b, "expires_at", r.ExpiresAt)
	b = plainjson.AppendStringField(b, "by", r.By)
	b = plainjson.AppendTimeField(b, "at", r.At)
	if r.N != nil {
		b = append(b, `,"n":`...)
		b = strconv.AppendInt(b, int64(*r.N), 10)
	}
	b = plainjson.AppendStringField(b, "ttl", r.TTL)
	b = plainjson.AppendStringField(b, "use_duration", r.Use)
	return append(b, "}\n"...), true
}

// encodable reports whether every t fits a JSON timestamp: years 0 to 9999,
// a zone offset under a day.
func encodable(ts ...time.Time) bool {
	for _, t := range ts {
		_, off := t.Zone()
		if y := t.Year(); y < 0 || y > 9999 || off <= -24*3600 || off >= 24*3600 {
			return false
		}
	}
	return true
}
