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

	"github.com/sandboxpool/sandboxpool/pool"
)

// fileVersion is the only layout this build reads and writes.
const fileVersion = 1

// ErrCorrupt is wrapped by every error about a store file whose content
// cannot be trusted. Such a file is never overwritten.
var ErrCorrupt = errors.New("corrupt store file")

// fileData is the on-disk layout.
type fileData struct {
	Version *int         `json:"version"`
	Target  *int         `json:"target"`
	TTL     string       `json:"ttl"`
	Use     string       `json:"use_duration"`
	Entries []pool.Entry `json:"entries"`
}

// decode parses and validates a store file. The error says what is wrong in
// one line, without the path (the caller adds it).
func decode(data []byte) (pool.Stored, error) {
	var fd fileData
	dec := json.NewDecoder(bytes.NewReader(data))
	// Unknown fields would be silently lost on the next rewrite: refuse them.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fd); err != nil {
		return pool.Stored{}, jsonProblem(err, dec)
	}
	// Decode stops after the first value; anything but whitespace after it is garbage.
	if _, err := dec.Token(); err != io.EOF {
		return pool.Stored{}, fmt.Errorf("trailing data after the JSON object at byte %d", dec.InputOffset())
	}
	switch {
	case fd.Version == nil:
		return pool.Stored{}, errors.New(`no "version" field (not a sandboxpool store file?)`)
	case *fd.Version != fileVersion:
		return pool.Stored{}, fmt.Errorf("unknown version %d (this build reads version %d)", *fd.Version, fileVersion)
	}
	st := pool.Stored{Entries: fd.Entries}
	if fd.Target != nil {
		if *fd.Target < 0 {
			return pool.Stored{}, fmt.Errorf("negative target %d", *fd.Target)
		}
		st.Target, st.HasTarget = *fd.Target, true
	}
	if fd.TTL != "" || fd.Use != "" {
		ttl, err1 := time.ParseDuration(fd.TTL)
		use, err2 := time.ParseDuration(fd.Use)
		if err1 != nil || err2 != nil || use <= 0 || ttl <= use {
			return pool.Stored{}, fmt.Errorf("bad timing ttl %q use_duration %q (want durations with 0 < use_duration < ttl)", fd.TTL, fd.Use)
		}
		st.TTL, st.UseDuration = ttl, use
	}
	// A repeated id could be claimed twice, so it counts as corruption too.
	seen := make(map[string]struct{}, len(fd.Entries))
	for i, e := range fd.Entries {
		if e.ID == "" {
			return pool.Stored{}, fmt.Errorf("entry %d has no id", i)
		}
		if _, dup := seen[e.ID]; dup {
			return pool.Stored{}, fmt.Errorf("entry %d repeats id %q", i, e.ID)
		}
		seen[e.ID] = struct{}{}
	}
	return st, nil
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

// encode writes st into buf: one entry per line, so the file stays readable
// and diffable by people.
func encode(buf *bytes.Buffer, st pool.Stored) error {
	buf.Reset()
	buf.WriteString(`{"version":` + strconv.Itoa(fileVersion))
	if st.HasTarget {
		buf.WriteString(`,"target":`)
		buf.WriteString(strconv.Itoa(st.Target))
	}
	if st.TTL > 0 {
		buf.WriteString(`,"ttl":"` + st.TTL.String() + `","use_duration":"` + st.UseDuration.String() + `"`)
	}
	buf.WriteString(`,"entries":[`)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false) // URLs keep their '&'
	for i := range st.Entries {
		buf.WriteByte('\n')
		if err := enc.Encode(&st.Entries[i]); err != nil {
			return err
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
		if i < len(st.Entries)-1 {
			buf.WriteByte(',')
		}
	}
	if len(st.Entries) > 0 {
		buf.WriteByte('\n')
	}
	buf.WriteString("]}\n")
	return nil
}
