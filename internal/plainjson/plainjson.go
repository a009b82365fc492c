// Package plainjson helps write a few hot JSON shapes without reflection
// (a claim's answer, its store record and journal line) byte for byte as
// encoding/json writes them: only for strings JSON writes unchanged and
// times it writes as RFC 3339; callers fall back to encoding/json for the
// rest.
package plainjson

import (
	"strconv"
	"time"
)

// Plain reports whether encoding/json writes s as it is between quotes:
// printable ASCII with no quote or backslash, nor <, > and & when it
// escapes HTML (json.Marshal and a default Encoder do).
func Plain(s string, escapeHTML bool) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e || c == '"' || c == '\\':
			return false
		case escapeHTML && (c == '<' || c == '>' || c == '&'):
			return false
		}
	}
	return true
}

// AppendString appends s quoted; s must be Plain.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Time reports whether time.Time's MarshalJSON writes t as AppendTime
// does: a year within 0-9999 and a zone offset of whole minutes under a day.
func Time(t time.Time) bool {
	if y := t.Year(); y < 0 || y > 9999 {
		return false
	}
	_, off := t.Zone()
	return off%60 == 0 && off > -24*3600 && off < 24*3600
}

// AppendTime appends t quoted as time.Time's MarshalJSON writes it; t must
// pass Time.
func AppendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// key appends `,"key":`, the start of a field after the first.
func key(b []byte, k string) []byte {
	b = append(b, `,"`...)
	b = append(b, k...)
	return append(b, `":`...)
}

// AppendStringField appends `,"key":"v"`, or nothing for "" (omitempty).
func AppendStringField(b []byte, k, v string) []byte {
	if v == "" {
		return b
	}
	return AppendString(key(b, k), v)
}

// AppendTimeField appends `,"key":"t"`, or nothing for the zero time.
func AppendTimeField(b []byte, k string, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	return AppendTime(key(b, k), t)
}

// AppendIntField appends `,"key":v`, or nothing for 0 (omitempty).
func AppendIntField(b []byte, k string, v int64) []byte {
	if v == 0 {
		return b
	}
	return strconv.AppendInt(key(b, k), v, 10)
}
